package kms

import (
	"bytes"
	"context"
	"testing"
)

// benchBackend measures, for one provider: EncryptField and DecryptField of
// 1 KiB fields with the data-key cache warm (hits) and cold (disabled: one
// backend call per operation), and Rewrap of a 1 KiB field from version 1 to
// version 2 (warm and cold). Each sub-benchmark reports ops/s.
func benchBackend(b *testing.B, p Provider) {
	ctx := context.Background()
	kr, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}})
	if err != nil {
		b.Fatal(err)
	}
	name := uniqueKeyName("bench")
	if _, err := kr.CreateKey(ctx, name, KeyOptions{}); err != nil {
		b.Fatal(err)
	}
	warm := NewEncryptor(kr, EncryptorConfig{Cache: CacheConfig{MaxUses: 1 << 30}})
	cold := NewEncryptor(kr, EncryptorConfig{Cache: CacheConfig{Disabled: true}})
	c := Context{Tenant: "acme", Field: "email"}
	pt := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	ct, err := warm.EncryptField(ctx, name, pt, c)
	if err != nil {
		b.Fatal(err)
	}
	opsPerSec := func(b *testing.B) {
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	}
	for _, mode := range []struct {
		name string
		enc  *Encryptor
	}{{"warm", warm}, {"cold", cold}} {
		b.Run("Encrypt1KiB/"+mode.name, func(b *testing.B) {
			b.SetBytes(int64(len(pt)))
			for i := 0; i < b.N; i++ {
				if _, err := mode.enc.EncryptField(ctx, name, pt, c); err != nil {
					b.Fatal(err)
				}
			}
			opsPerSec(b)
		})
		b.Run("Decrypt1KiB/"+mode.name, func(b *testing.B) {
			b.SetBytes(int64(len(pt)))
			for i := 0; i < b.N; i++ {
				if _, err := mode.enc.DecryptField(ctx, name, ct, c); err != nil {
					b.Fatal(err)
				}
			}
			opsPerSec(b)
		})
	}
	old := ct
	if _, err := kr.RotateKey(ctx, name); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct {
		name string
		enc  *Encryptor
	}{{"warm", warm}, {"cold", cold}} {
		b.Run("Rewrap1KiB/"+mode.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := mode.enc.Rewrap(ctx, name, old, c); err != nil {
					b.Fatal(err)
				}
			}
			opsPerSec(b)
		})
	}
}

func BenchmarkLocal(b *testing.B) {
	p, err := NewLocalProvider(testRootKey(b))
	if err != nil {
		b.Fatal(err)
	}
	benchBackend(b, p)
}

// BenchmarkVaultStandIn runs against the in-test transit stand-in over
// loopback HTTP: it measures our client path and the HTTP round trip, not a
// real Vault's server-side cost.
func BenchmarkVaultStandIn(b *testing.B) {
	_, p := newTestVault(b, VaultConfig{})
	benchBackend(b, p)
}

func BenchmarkAWSLocalKMS(b *testing.B) {
	benchBackend(b, newTestAWS(b, nil))
}

func BenchmarkParseCiphertext(b *testing.B) {
	raw := handField("pii", 3, bytes.Repeat([]byte{1}, 60), make([]byte, 12), make([]byte, 1040))
	text := []byte(EncodeText(raw))
	for _, in := range []struct {
		name string
		data []byte
	}{{"binary", raw}, {"text", text}} {
		b.Run(in.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := ParseCiphertext(in.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
