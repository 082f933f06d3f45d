package kms

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// benchBackend measures, for one provider, operations per second on 1 KiB
// fields:
//
//   - Encrypt1KiB, Decrypt1KiB: EncryptField / DecryptField with the
//     data-key cache warm (every operation after the first is a cache hit:
//     no backend call) and cold (cache disabled: every encryption generates
//     and wraps a fresh data key, every decryption unwraps one — one backend
//     call per operation);
//   - Rewrap1KiB: Rewrap of a field ciphertext from version 1 to version 2
//     (opened and sealed again under a data key of the newest version; warm:
//     both data keys cached; cold: one unwrap and one data-key generation);
//   - RewrapSecret: Rewrap of a wrapped 32-byte secret, which is the
//     backend's own rewrap (Vault transit/rewrap, AWS ReEncrypt; in process
//     for local and PKCS#11) — no cache is involved.
//
// Each reports ns/op, ops/s and kms-calls/op (calls that reached the
// provider, to show which figures are backend-bound).
func benchBackend(b *testing.B, p Provider) {
	ctx := context.Background()
	cp := &countingProvider{Provider: p}
	kr, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{cp}})
	if err != nil {
		b.Fatal(err)
	}
	name := uniqueKeyName("bench")
	if _, err := kr.CreateKey(ctx, name, KeyOptions{}); err != nil {
		b.Fatal(err)
	}
	warm := NewEncryptor(kr, EncryptorConfig{Cache: CacheConfig{MaxUses: 1 << 30, TTL: time.Hour}})
	cold := NewEncryptor(kr, EncryptorConfig{Cache: CacheConfig{Disabled: true}})
	c := Context{Tenant: "acme", Field: "email"}
	pt := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	ct, err := warm.EncryptField(ctx, name, pt, c)
	if err != nil {
		b.Fatal(err)
	}
	calls := func() int64 {
		return cp.generate.Load() + cp.decrypt.Load() + cp.encrypt.Load() + cp.rewrap.Load()
	}
	// measure runs op b.N times after one untimed warm-up call (which fills
	// the warm cache) and reports the metrics.
	measure := func(b *testing.B, op func() error) {
		if err := op(); err != nil {
			b.Fatal(err)
		}
		before := calls()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		b.ReportMetric(float64(calls()-before)/float64(b.N), "kms-calls/op")
	}
	modes := []struct {
		name string
		enc  *Encryptor
	}{{"warm", warm}, {"cold", cold}}
	for _, mode := range modes {
		b.Run("Encrypt1KiB/"+mode.name, func(b *testing.B) {
			b.SetBytes(int64(len(pt)))
			measure(b, func() error { _, err := mode.enc.EncryptField(ctx, name, pt, c); return err })
		})
		b.Run("Decrypt1KiB/"+mode.name, func(b *testing.B) {
			b.SetBytes(int64(len(pt)))
			measure(b, func() error { _, err := mode.enc.DecryptField(ctx, name, ct, c); return err })
		})
	}
	secret, err := warm.EncryptSecret(ctx, name, bytes.Repeat([]byte{7}, 32), c)
	if err != nil {
		b.Fatal(err)
	}
	old := ct
	if _, err := kr.RotateKey(ctx, name); err != nil {
		b.Fatal(err)
	}
	for _, mode := range modes {
		b.Run("Rewrap1KiB/"+mode.name, func(b *testing.B) {
			b.SetBytes(int64(len(pt)))
			measure(b, func() error { _, err := mode.enc.Rewrap(ctx, name, old, c); return err })
		})
	}
	b.Run("RewrapSecret", func(b *testing.B) {
		measure(b, func() error { _, err := cold.Rewrap(ctx, name, secret, c); return err })
	})
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

// BenchmarkAWSLocalKMS runs against the local-kms emulator (a separate
// process on loopback HTTP, started by the tests): it measures the SDK's
// request signing and HTTP round trip plus the emulator's work, not AWS KMS's
// network latency (typically milliseconds per call from inside a region).
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
