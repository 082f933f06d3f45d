package kms

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func newLocalKeyring(t *testing.T, clock *fakeClock) (*Keyring, *LocalProvider) {
	t.Helper()
	p, err := NewLocalProvider(testRootKey(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}}
	if clock != nil {
		cfg.Clock = clock.Now
	}
	kr, err := NewKeyring(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kr, p
}

func TestKeyRecordMarshalAndValidate(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	rec := &KeyRecord{
		Name: "pii", Backend: "aws", MinDecryptionVersion: 2, RotationPeriod: 720 * time.Hour,
		CreatedAt: now, UpdatedAt: now, Revision: 3,
		Versions: []KeyVersion{
			{Version: 1, CreatedAt: now, Ref: "arn:1"},
			{Version: 2, CreatedAt: now, Ref: "arn:2", RefVersion: 5, Material: []byte{1, 2}, RootKeyID: "abcd"},
		},
	}
	b1, err := MarshalKeyRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := MarshalKeyRecord(rec)
	if !bytes.Equal(b1, b2) || !bytes.Contains(b1, []byte(`"format":1`)) {
		t.Fatalf("encoding not deterministic or unversioned: %s", b1)
	}
	back, err := UnmarshalKeyRecord(b1)
	if err != nil {
		t.Fatal(err)
	}
	if b3, _ := MarshalKeyRecord(back); !bytes.Equal(b1, b3) {
		t.Fatalf("round trip changed the record:\n%s\n%s", b1, b3)
	}
	bad := []func(r *KeyRecord){
		func(r *KeyRecord) { r.Name = "no.dot" },
		func(r *KeyRecord) { r.Name = "No/slash" },
		func(r *KeyRecord) { r.Name = "a/b/c" },
		func(r *KeyRecord) { r.Backend = "" },
		func(r *KeyRecord) { r.Versions = nil },
		func(r *KeyRecord) { r.Versions[1].Version = 3 },
		func(r *KeyRecord) { r.MinDecryptionVersion = 3 },
		func(r *KeyRecord) { r.MinDecryptionVersion = 0 },
		func(r *KeyRecord) { r.RotationPeriod = time.Minute },
		func(r *KeyRecord) { r.Revision = 0 },
	}
	for i, f := range bad {
		r := rec.Clone()
		f(r)
		if _, err := MarshalKeyRecord(r); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("invalid record %d accepted: %v", i, err)
		}
	}
	if _, err := UnmarshalKeyRecord([]byte(`{"format":2,"name":"pii"}`)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("future format: %v", err)
	}
	// Clone is deep.
	c := rec.Clone()
	c.Versions[1].Material[0] = 9
	if rec.Versions[1].Material[0] != 1 {
		t.Fatal("Clone shares material")
	}
}

func TestValidateKeyName(t *testing.T) {
	for _, ok := range []string{"a", "pii", "PII_v2", "signing-keys", strings.Repeat("k", 64), "acme/pii", "a_b-1/PII_v2",
		strings.Repeat("t", 64) + "/" + strings.Repeat("k", 64)} {
		if err := ValidateKeyName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("k", 65), "a b", "a.b", "ключ", "a\x00", "/pii", "acme/", "Acme/pii", "a/b/c",
		"../acme/pii", "acme//pii", strings.Repeat("t", 65) + "/pii", "acme/" + strings.Repeat("k", 65), "acme/p.ii"} {
		if err := ValidateKeyName(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, bad := range []string{"acme/pii", "a/b", ""} {
		if err := ValidateShortKeyName(bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("short name %q accepted", bad)
		}
	}
	if QualifyKeyName("", "pii") != "pii" || QualifyKeyName("acme", "pii") != "acme/pii" {
		t.Error("QualifyKeyName")
	}
	if ten, n := SplitKeyName("acme/pii"); ten != "acme" || n != "pii" {
		t.Error("SplitKeyName of a tenant key")
	}
	if ten, n := SplitKeyName("pii"); ten != "" || n != "pii" {
		t.Error("SplitKeyName of a global key")
	}
}

func TestDueForRotation(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := func(name string, period time.Duration, latest time.Time) *KeyRecord {
		return &KeyRecord{Name: name, RotationPeriod: period, Versions: []KeyVersion{{Version: 1, CreatedAt: t0}, {Version: 2, CreatedAt: latest}}}
	}
	recs := []*KeyRecord{
		rec("weekly", 7*24*time.Hour, t0),
		rec("manual", 0, t0),
		rec("daily-fresh", 24*time.Hour, t0.Add(6*24*time.Hour+12*time.Hour)),
		rec("daily", 24*time.Hour, t0.Add(5*24*time.Hour)),
		nil,
	}
	now := t0.Add(7 * 24 * time.Hour)
	got := DueForRotation(recs, now)
	if strings.Join(got, ",") != "daily,weekly" {
		t.Fatalf("due %v", got)
	}
	if got := DueForRotation(recs, now.Add(-time.Nanosecond)); strings.Join(got, ",") != "daily" {
		t.Fatalf("a nanosecond early: %v", got)
	}
	if rec("weekly", 7*24*time.Hour, t0).NextRotation() != now || !rec("m", 0, t0).NextRotation().IsZero() {
		t.Fatal("NextRotation")
	}
}

func TestMemKeyStoreCompareAndSet(t *testing.T) {
	ctx := context.Background()
	s := NewMemKeyStore()
	now := time.Now().UTC()
	r1 := &KeyRecord{Name: "k", Backend: "local", MinDecryptionVersion: 1, Revision: 1, CreatedAt: now, Versions: []KeyVersion{{Version: 1}}}
	if err := s.PutKey(ctx, r1); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKey(ctx, r1); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second create: %v", err)
	}
	r2 := r1.Clone()
	r2.Revision = 2
	r3 := r1.Clone()
	r3.Revision = 3
	if err := s.PutKey(ctx, r3); !errors.Is(err, ErrConflict) {
		t.Fatalf("skipped revision: %v", err)
	}
	if err := s.PutKey(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKey(ctx, r2); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale update: %v", err)
	}
	orphan := r2.Clone()
	orphan.Name = "other"
	if err := s.PutKey(ctx, orphan); !errors.Is(err, ErrConflict) {
		t.Fatalf("update of a missing key: %v", err)
	}
	if _, err := s.GetKey(ctx, "nope"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatal(err)
	}
	// Concurrent updates from the same revision: exactly one wins.
	var wins, conflicts int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := r2.Clone()
			r.Revision = 3
			err := s.PutKey(ctx, r)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins++
			} else if errors.Is(err, ErrConflict) {
				conflicts++
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != 7 {
		t.Fatalf("%d wins, %d conflicts", wins, conflicts)
	}
}

func TestKeyringConfigAndDispatch(t *testing.T) {
	ctx := context.Background()
	if _, err := NewKeyring(KeyringConfig{}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no store: %v", err)
	}
	if _, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore()}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no provider: %v", err)
	}
	local, _ := NewLocalProvider(testRootKey(t))
	_, vault := newTestVault(t, VaultConfig{})
	if _, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{local, local}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("duplicate provider: %v", err)
	}
	if _, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{local}, DefaultBackend: "aws"}); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("unconfigured default: %v", err)
	}
	kr, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{local, vault}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(kr.Backends(), ",") != "local,vault" {
		t.Fatalf("backends %v", kr.Backends())
	}
	if _, err := kr.CreateKey(ctx, "k", KeyOptions{}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("two providers, no default, no backend: %v", err)
	}
	if _, err := kr.CreateKey(ctx, "k", KeyOptions{Backend: "gcpkms"}); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("unknown backend: %v", err)
	}
	if _, err := kr.CreateKey(ctx, "bad name", KeyOptions{Backend: "local"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := kr.CreateKey(ctx, "k", KeyOptions{Backend: "local", RotationPeriod: time.Minute}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("short rotation period: %v", err)
	}
	if _, err := kr.CreateKey(ctx, "k", KeyOptions{Backend: "local", BackendRef: "x"}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("local adoption: %v", err)
	}
	if _, err := kr.CreateKey(ctx, "in-local", KeyOptions{Backend: "local"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.CreateKey(ctx, "in-vault", KeyOptions{Backend: "vault"}); err != nil {
		t.Fatal(err)
	}
	enc := NewEncryptor(kr, EncryptorConfig{})
	c := Context{Tenant: "acme", Field: "email"}
	for _, name := range []string{"in-local", "in-vault"} {
		ct, err := enc.EncryptField(ctx, name, []byte(name), c)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := enc.DecryptField(ctx, "", ct, c); err != nil || string(got) != name {
			t.Fatalf("%s: %v", name, err)
		}
	}
	keys, _ := kr.ListKeys(ctx)
	if len(keys) != 2 || keys[0].Backend != "local" || keys[1].Backend != "vault" {
		t.Fatalf("ListKeys %+v", keys)
	}
	// A server without the vault backend still serves its local keys and
	// says plainly why it cannot use the vault one.
	kr2, _ := NewKeyring(KeyringConfig{Store: kr.Store(), Providers: []Provider{local}})
	enc2 := NewEncryptor(kr2, EncryptorConfig{})
	if _, err := enc2.EncryptField(ctx, "in-vault", []byte("x"), c); !errors.Is(err, ErrUnknownBackend) {
		t.Fatalf("unconfigured backend: %v", err)
	}
	if err := kr.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestSetMinDecryptionVersionIdempotentAndRotationPeriod(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	kr, _ := newLocalKeyring(t, clock)
	rec, _ := kr.CreateKey(ctx, "k", KeyOptions{RotationPeriod: 48 * time.Hour})
	if !rec.CreatedAt.Equal(clock.Now()) || rec.NextRotation() != clock.Now().Add(48*time.Hour) {
		t.Fatalf("record times %v %v", rec.CreatedAt, rec.NextRotation())
	}
	kr.RotateKey(ctx, "k")
	r1, err := kr.SetMinDecryptionVersion(ctx, "k", 2)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := kr.SetMinDecryptionVersion(ctx, "k", 2)
	if err != nil || r2.Revision != r1.Revision {
		t.Fatalf("same value stored again: rev %d -> %d, %v", r1.Revision, r2.Revision, err)
	}
	if _, err := kr.SetMinDecryptionVersion(ctx, "k", 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("0: %v", err)
	}
	if r, err := kr.SetRotationPeriod(ctx, "k", 0); err != nil || r.RotationPeriod != 0 || !r.NextRotation().IsZero() {
		t.Fatalf("clear rotation period: %v", err)
	}
	if _, err := kr.SetRotationPeriod(ctx, "k", time.Second); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("tiny period: %v", err)
	}
	if _, err := kr.SetRotationPeriod(ctx, "missing", time.Hour); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("missing key: %v", err)
	}
}

// gatedProvider blocks GenerateDataKey until released, to hold a cache miss open.
type gatedProvider struct {
	Provider
	release chan struct{}
	calls   int
	mu      sync.Mutex
}

func (g *gatedProvider) GenerateDataKey(ctx context.Context, rec *KeyRecord, v KeyVersion, b Binding) ([]byte, []byte, error) {
	g.mu.Lock()
	g.calls++
	g.mu.Unlock()
	<-g.release
	return g.Provider.GenerateDataKey(ctx, rec, v, b)
}

// A cold burst in one context costs one backend call, not one per request.
func TestColdBurstSharesOneBackendCall(t *testing.T) {
	ctx := context.Background()
	local, _ := NewLocalProvider(testRootKey(t))
	g := &gatedProvider{Provider: local, release: make(chan struct{})}
	kr, _ := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{g}})
	if _, err := kr.CreateKey(ctx, "k", KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	enc := NewEncryptor(kr, EncryptorConfig{})
	const n = 16
	c := Context{Tenant: "acme", Field: "email"}
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := enc.EncryptField(ctx, "k", []byte("x"), c)
			errc <- err
		}()
	}
	waitFor(t, 5*time.Second, "every request to miss the cache", func() bool { return enc.CacheStats().Misses >= n })
	close(g.release)
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	if g.calls != 1 {
		t.Fatalf("%d concurrent cold requests made %d backend calls, want 1", n, g.calls)
	}
	if st := enc.CacheStats(); st.BackendCalls != 1 || st.Hits != n-1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	kr, _ := newLocalKeyring(t, nil)
	kr.CreateKey(ctx, "k", KeyOptions{})
	enc := NewEncryptor(kr, EncryptorConfig{Cache: CacheConfig{MaxEntries: 4}})
	for i := 0; i < 10; i++ {
		enc.EncryptField(ctx, "k", []byte("x"), Context{Tenant: string(rune('a' + i))})
	}
	st := enc.CacheStats()
	// Each encryption miss adds an encryption and a decryption entry.
	if st.Entries != 4 || st.Evicted != 16 {
		t.Fatalf("stats %+v", st)
	}
	enc.PurgeCache("k")
	if enc.CacheStats().Entries != 0 {
		t.Fatal("PurgeCache left entries")
	}
}
