package kms

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConformanceLocal(t *testing.T) {
	runConformance(t, func(t *testing.T) conformanceBackend {
		p, err := NewLocalProvider(testRootKey(t))
		if err != nil {
			t.Fatal(err)
		}
		return conformanceBackend{Provider: p}
	})
}

func TestLocalRootKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "root.key")
	key, err := InitLocalRootKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", st.Mode(), err)
	}
	if _, err := InitLocalRootKey(path); err == nil {
		t.Fatal("InitLocalRootKey overwrote an existing key")
	}
	got, err := LoadLocalRootKey(path)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("LoadLocalRootKey: %v", err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644, 0o620} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadLocalRootKey(path)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o accepted or unclear: %v", mode, err)
		}
		if strings.Contains(err.Error(), EncodeText(key)) {
			t.Fatal("error shows the key")
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadLocalRootKey(path); err != nil {
		t.Fatalf("mode 0400 refused: %v", err)
	}
	if _, err := LoadLocalRootKey(dir); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("directory accepted: %v", err)
	}
	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("c2hvcnQ=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadLocalRootKey(bad); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("short key accepted: %v", err)
	}
	raw := filepath.Join(dir, "raw.key")
	rawKey := bytes.Repeat([]byte{0xfe}, RootKeySize)
	if err := os.WriteFile(raw, rawKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadLocalRootKey(raw); err != nil || !bytes.Equal(got, rawKey) {
		t.Fatalf("raw key: %v", err)
	}
	// LoadOrInit creates once, then loads the same key.
	p2 := filepath.Join(dir, "dev.key")
	k1, err := LoadOrInitLocalRootKey(p2)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrInitLocalRootKey(p2)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("LoadOrInit: %v", err)
	}
}

func TestLocalRootKeyEnvAndRegistry(t *testing.T) {
	key := testRootKey(t)
	t.Setenv("TEST_ASG_ROOT", "  "+string(bytes.TrimSpace([]byte(b64(key))))+"\n")
	got, err := LocalRootKeyFromEnv("TEST_ASG_ROOT")
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("LocalRootKeyFromEnv: %v", err)
	}
	if _, err := LocalRootKeyFromEnv("TEST_ASG_UNSET_VARIABLE"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("unset variable: %v", err)
	}
	p, err := OpenProvider(context.Background(), "local", map[string]string{"root_key_env": "TEST_ASG_ROOT"})
	if err != nil {
		t.Fatal(err)
	}
	if p.(*LocalProvider).RootKeyID() != RootKeyID(key) {
		t.Fatal("registry built a provider with another key")
	}
	if _, err := OpenProvider(context.Background(), "local", map[string]string{"root_key_env": "TEST_ASG_ROOT", "rot_key_file": "x"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("misspelt setting accepted: %v", err)
	}
	if _, err := OpenProvider(context.Background(), "gcpkms", nil); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("unknown backend: %v", err)
	}
}

// A second server with the same root key decrypts what the first encrypted
// (the record travels through the shared store); one with another root key
// says which root key it would need.
func TestLocalSharedStoreAcrossServers(t *testing.T) {
	ctx := context.Background()
	root := testRootKey(t)
	store := NewMemKeyStore()
	newServer := func(root []byte) *Encryptor {
		p, err := NewLocalProvider(root)
		if err != nil {
			t.Fatal(err)
		}
		kr, err := NewKeyring(KeyringConfig{Store: store, Providers: []Provider{p}})
		if err != nil {
			t.Fatal(err)
		}
		return NewEncryptor(kr, EncryptorConfig{})
	}
	s1, s2 := newServer(root), newServer(root)
	if _, err := s1.Keyring().CreateKey(ctx, "pii", KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	c := Context{Tenant: "acme", Field: "email"}
	ct, err := s1.EncryptField(ctx, "pii", []byte("ann@acme.test"), c)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s2.DecryptField(ctx, "pii", ct, c); err != nil || string(got) != "ann@acme.test" {
		t.Fatalf("second server: %v", err)
	}
	other := testRootKey(t)
	s3 := newServer(other)
	_, err = s3.DecryptField(ctx, "pii", ct, c)
	if !errors.Is(err, ErrDecrypt) || !strings.Contains(err.Error(), RootKeyID(root)) || !strings.Contains(err.Error(), RootKeyID(other)) {
		t.Fatalf("wrong root key: %v", err)
	}
	// The record holds no key in the clear.
	rec, _ := store.GetKey(ctx, "pii")
	data, _ := MarshalKeyRecord(rec)
	if bytes.Contains(data, root) {
		t.Fatal("root key in the record")
	}
}
