package kms

import (
	"context"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const standInToken = "hvs.test-token-for-the-stand-in"

func newTestVault(t testing.TB, cfg VaultConfig) (*vaultTransitStandIn, *VaultProvider) {
	t.Helper()
	s := newVaultStandIn(standInToken, cfg.Namespace, orDefault(strings.Trim(cfg.MountPath, "/"), "transit"), false)
	t.Cleanup(s.Close)
	cfg.Address = s.URL
	if cfg.Token == "" {
		cfg.Token = standInToken
	}
	p, err := NewVaultProvider(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func TestConformanceVault(t *testing.T) {
	runConformance(t, func(t *testing.T) conformanceBackend {
		_, p := newTestVault(t, VaultConfig{})
		return conformanceBackend{Provider: p, EnforcesPolicy: true}
	})
}

func newVaultKeyring(t *testing.T, p Provider) (*Keyring, *Encryptor) {
	t.Helper()
	kr, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}})
	if err != nil {
		t.Fatal(err)
	}
	return kr, NewEncryptor(kr, EncryptorConfig{Cache: CacheConfig{Disabled: true}})
}

func TestVaultVersionsAndPolicyReachVault(t *testing.T) {
	ctx := context.Background()
	s, p := newTestVault(t, VaultConfig{KeyPrefix: "asg-"})
	kr, enc := newVaultKeyring(t, p)
	rec, err := kr.CreateKey(ctx, "pii", KeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Versions[0].Ref != "asg-pii" || s.latest("asg-pii") != 1 {
		t.Fatalf("transit key %q, vault latest %d", rec.Versions[0].Ref, s.latest("asg-pii"))
	}
	c := Context{Tenant: "acme", Field: "email"}
	sct1, err := enc.EncryptSecret(ctx, "pii", []byte("v1 secret"), c)
	if err != nil {
		t.Fatal(err)
	}
	if ct, _ := ParseCiphertext(sct1); !strings.HasPrefix(string(ct.WrappedKey), "vault:v1:") {
		t.Fatalf("wrapped blob %q", ct.WrappedKey)
	}
	// Someone rotates the transit key behind our back: our version 2 then
	// maps to Vault's version 3, and we encrypt with exactly that one.
	if _, err := p.client.Logical().Write("transit/keys/asg-pii/rotate", nil); err != nil {
		t.Fatal(err)
	}
	rec, err = kr.RotateKey(ctx, "pii")
	if err != nil {
		t.Fatal(err)
	}
	if v := rec.Latest(); v.Version != 2 || v.RefVersion != 3 {
		t.Fatalf("version mapping %+v", v)
	}
	sct2, _ := enc.EncryptSecret(ctx, "pii", []byte("v2 secret"), c)
	if ct, _ := ParseCiphertext(sct2); ct.KeyVersion != 2 || !strings.HasPrefix(string(ct.WrappedKey), "vault:v3:") {
		t.Fatalf("v2 ciphertext %d %q", ct.KeyVersion, ct.WrappedKey)
	}
	if _, err := kr.SetMinDecryptionVersion(ctx, "pii", 2); err != nil {
		t.Fatal(err)
	}
	if got := s.minDecryption("asg-pii"); got != 3 {
		t.Fatalf("vault min_decryption_version %d, want 3", got)
	}
	if _, err := enc.DecryptField(ctx, "pii", sct1, c); !errors.Is(err, ErrVersionRetired) {
		t.Fatalf("retired: %v", err)
	}
	if got, err := enc.DecryptField(ctx, "pii", sct2, c); err != nil || string(got) != "v2 secret" {
		t.Fatalf("current: %v", err)
	}
}

func TestVaultAdoptExistingKey(t *testing.T) {
	ctx := context.Background()
	_, p := newTestVault(t, VaultConfig{})
	if _, err := p.client.Logical().Write("transit/keys/legacy-derived", map[string]any{"derived": true}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.client.Logical().Write("transit/keys/legacy-plain", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	kr, enc := newVaultKeyring(t, p)
	if _, err := kr.CreateKey(ctx, "adopted", KeyOptions{BackendRef: "legacy-derived"}); err != nil {
		t.Fatal(err)
	}
	ct, err := enc.EncryptField(ctx, "adopted", []byte("x"), Context{Tenant: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.DecryptField(ctx, "adopted", ct, Context{Tenant: "t"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.CreateKey(ctx, "plain", KeyOptions{BackendRef: "legacy-plain"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("non-derived key adopted: %v", err)
	}
	if _, err := kr.CreateKey(ctx, "ghost", KeyOptions{BackendRef: "does-not-exist"}); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("missing key adopted: %v", err)
	}
}

func TestVaultBadToken(t *testing.T) {
	_, p := newTestVault(t, VaultConfig{Token: "hvs.wrong"})
	kr, _ := newVaultKeyring(t, p)
	_, err := kr.CreateKey(context.Background(), "k", KeyOptions{})
	if !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("bad token: %v", err)
	}
	if strings.Contains(err.Error(), "hvs.wrong") {
		t.Fatal("token in the error")
	}
}

func TestVaultNamespaceAndMount(t *testing.T) {
	ctx := context.Background()
	s, p := newTestVault(t, VaultConfig{Namespace: "team-a", MountPath: "/kms-transit/"})
	kr, enc := newVaultKeyring(t, p)
	if _, err := kr.CreateKey(ctx, "ns-key", KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := enc.EncryptField(ctx, "ns-key", []byte("x"), Context{}); err != nil {
		t.Fatal(err)
	}
	if s.latest("ns-key") != 1 {
		t.Fatal("key not created under the custom mount")
	}
	other, err := NewVaultProvider(VaultConfig{Address: s.URL, Token: standInToken, Namespace: "team-b", MountPath: "kms-transit"})
	if err != nil {
		t.Fatal(err)
	}
	kr2, _ := newVaultKeyring(t, other)
	if _, err := kr2.CreateKey(ctx, "ns-key", KeyOptions{}); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("other namespace: %v", err)
	}
}

func TestVaultTLS(t *testing.T) {
	ctx := context.Background()
	s := newVaultStandIn(standInToken, "", "transit", true)
	defer s.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := OpenProvider(ctx, "vault", map[string]string{"address": s.URL, "token": standInToken, "ca_cert": caFile, "timeout": "5s", "max_retries": "0"})
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := newVaultKeyring(t, p)
	if _, err := kr.CreateKey(ctx, "tls-key", KeyOptions{}); err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	untrusted, err := NewVaultProvider(VaultConfig{Address: s.URL, Token: standInToken, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	kr2, _ := newVaultKeyring(t, untrusted)
	if _, err := kr2.CreateKey(ctx, "tls-key2", KeyOptions{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted server certificate accepted: %v", err)
	}
}

func TestVaultRegistrySettings(t *testing.T) {
	ctx := context.Background()
	s := newVaultStandIn(standInToken, "", "transit", false)
	defer s.Close()
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(standInToken+"\n"), 0o600)
	p, err := OpenProvider(ctx, "vault", map[string]string{"address": s.URL, "token_file": tokenFile, "key_prefix": "x-"})
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := newVaultKeyring(t, p)
	if _, err := kr.CreateKey(ctx, "k", KeyOptions{}); err != nil || s.latest("x-k") != 1 {
		t.Fatalf("registry-built provider: %v", err)
	}
	for _, bad := range []map[string]string{{"timeout": "soon"}, {"max_retries": "-3"}, {"adress": "x"}, {"tls_skip_verify": "maybe"}} {
		if _, err := OpenProvider(ctx, "vault", bad); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("settings %v: %v", bad, err)
		}
	}
}

func TestVaultRetriesServerErrors(t *testing.T) {
	ctx := context.Background()
	s, p := newTestVault(t, VaultConfig{MaxRetries: 2, RetryWaitMin: 5 * time.Millisecond, RetryWaitMax: 10 * time.Millisecond})
	kr, enc := newVaultKeyring(t, p)
	if _, err := kr.CreateKey(ctx, "r", KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s.failNext.Store(2)
	if _, err := enc.EncryptField(ctx, "r", []byte("x"), Context{}); err != nil {
		t.Fatalf("two 503s with two retries: %v", err)
	}
	s.failNext.Store(3)
	if _, err := enc.EncryptField(ctx, "r", []byte("x"), Context{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("three 503s with two retries: %v", err)
	}
}

// Backend unreachable → ErrUnavailable, fast, thanks to the timeouts.
func TestVaultUnavailable(t *testing.T) {
	ctx := context.Background()
	// A closed port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := "http://" + ln.Addr().String()
	ln.Close()
	// A port that accepts connections and never answers.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for name, addr := range map[string]string{"closed port": closedAddr, "silent server": "http://" + hang.Addr().String()} {
		p, err := NewVaultProvider(VaultConfig{Address: addr, Token: standInToken, Timeout: 300 * time.Millisecond, MaxRetries: 1, RetryWaitMin: 10 * time.Millisecond, RetryWaitMax: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		kr, _ := newVaultKeyring(t, p)
		start := time.Now()
		_, err = kr.CreateKey(ctx, "k", KeyOptions{})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("%s: %v, want ErrUnavailable", name, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("%s: took %s", name, d)
		}
	}
	// With a record already stored (Vault went away later), data operations
	// fail the same way.
	s, p := newTestVault(t, VaultConfig{Timeout: 300 * time.Millisecond, MaxRetries: -1})
	kr, enc := newVaultKeyring(t, p)
	if _, err := kr.CreateKey(ctx, "k", KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := enc.EncryptField(ctx, "k", []byte("x"), Context{}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("after Vault stopped: %v", err)
	}
}
