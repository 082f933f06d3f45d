package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// conformanceBackend is what a backend's test hands the conformance suite.
type conformanceBackend struct {
	// Provider under test (shared by the subtests; each uses its own keys).
	Provider Provider
	// EnforcesPolicy: the backend itself refuses retired versions after
	// ApplyPolicy (Vault, AWS, PKCS#11), not only the Keyring.
	EnforcesPolicy bool
}

// runConformance is THE test suite every backend passes: round trips, wrong
// context, rotation, rewrap, min_decryption_version, tampering, truncation,
// the data-key cache, and concurrency. newBackend is called once.
func runConformance(t *testing.T, newBackend func(t *testing.T) conformanceBackend) {
	be := newBackend(t)
	type env struct {
		cp    *countingProvider
		kr    *Keyring
		enc   *Encryptor
		clock *fakeClock
		key   string
	}
	setup := func(t *testing.T, cache CacheConfig) env {
		t.Helper()
		cp := &countingProvider{Provider: be.Provider}
		clock := newFakeClock()
		kr, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{cp}, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		key := uniqueKeyName("conf")
		if _, err := kr.CreateKey(context.Background(), key, KeyOptions{}); err != nil {
			t.Fatalf("CreateKey: %v", err)
		}
		return env{cp: cp, kr: kr, enc: NewEncryptor(kr, EncryptorConfig{Cache: cache, Clock: clock.Now}), clock: clock, key: key}
	}
	ctx := context.Background()
	acmeEmail := Context{Tenant: "acme", Field: "email"}

	t.Run("RoundTrip", func(t *testing.T) {
		for _, cache := range []CacheConfig{{}, {Disabled: true}} {
			e := setup(t, cache)
			for _, size := range []int{0, 1, 1024, 1 << 20} {
				pt := bytes.Repeat([]byte{'x'}, size)
				ct, err := e.enc.EncryptField(ctx, e.key, pt, acmeEmail)
				if err != nil {
					t.Fatalf("EncryptField(%d bytes): %v", size, err)
				}
				if bytes.Contains(ct, pt) && size > 16 {
					t.Fatal("plaintext visible in ciphertext")
				}
				for _, form := range [][]byte{ct, []byte(EncodeText(ct))} {
					got, err := e.enc.DecryptField(ctx, e.key, form, acmeEmail)
					if err != nil || !bytes.Equal(got, pt) {
						t.Fatalf("DecryptField(%d bytes): %v", size, err)
					}
				}
				parsed, err := ParseCiphertext(ct)
				if err != nil || parsed.KeyName != e.key || parsed.KeyVersion != 1 || parsed.Kind != KindField {
					t.Fatalf("ParseCiphertext: %+v %v", parsed, err)
				}
			}
			// Two encryptions of the same value differ (random nonces).
			a, _ := e.enc.EncryptField(ctx, e.key, []byte("same"), acmeEmail)
			b, _ := e.enc.EncryptField(ctx, e.key, []byte("same"), acmeEmail)
			if bytes.Equal(a, b) {
				t.Fatal("two encryptions are identical")
			}
		}
		e := setup(t, CacheConfig{})
		secret := []byte("ed25519 private key bytes .....")
		sct, err := e.enc.EncryptSecret(ctx, e.key, secret, Context{Field: "signing_key/k1"})
		if err != nil {
			t.Fatalf("EncryptSecret: %v", err)
		}
		got, err := e.enc.DecryptField(ctx, "", []byte(EncodeText(sct)), Context{Field: "signing_key/k1"})
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("decrypt secret: %v", err)
		}
		dk, err := e.enc.GenerateDataKey(ctx, e.key, acmeEmail)
		if err != nil || len(dk.Plaintext) != 32 || dk.KeyVersion != 1 {
			t.Fatalf("GenerateDataKey: %+v %v", dk, err)
		}
		got, err = e.enc.DecryptField(ctx, e.key, dk.Ciphertext, acmeEmail)
		if err != nil || !bytes.Equal(got, dk.Plaintext) {
			t.Fatalf("decrypt data key: %v", err)
		}
		if _, err := e.enc.EncryptField(ctx, "no-such-key", []byte("x"), acmeEmail); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("unknown key: %v", err)
		}
	})

	t.Run("WrongContext", func(t *testing.T) {
		for _, cache := range []CacheConfig{{}, {Disabled: true}} {
			e := setup(t, cache)
			ct, err := e.enc.EncryptField(ctx, e.key, []byte("ann@acme.test"), acmeEmail)
			if err != nil {
				t.Fatal(err)
			}
			// Warm the decryption cache for the right context first: the
			// wrong contexts must still fail.
			if _, err := e.enc.DecryptField(ctx, e.key, ct, acmeEmail); err != nil {
				t.Fatal(err)
			}
			for _, wrong := range []Context{
				{Tenant: "globex", Field: "email"},
				{Tenant: "acme", Field: "mfa_secret"},
				{Tenant: "", Field: "email"},
				{Tenant: "acmeemail", Field: ""},
				{Tenant: "acm", Field: "eemail"},
			} {
				pt, err := e.enc.DecryptField(ctx, e.key, ct, wrong)
				if !errors.Is(err, ErrDecrypt) {
					t.Fatalf("context %+v: got %q, %v; want ErrDecrypt", wrong, pt, err)
				}
				if strings.Contains(err.Error(), "ann@acme.test") {
					t.Fatalf("error shows the plaintext: %v", err)
				}
			}
			sct, err := e.enc.EncryptSecret(ctx, e.key, []byte("s3cret"), acmeEmail)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.enc.DecryptField(ctx, e.key, sct, Context{Tenant: "globex", Field: "email"}); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("secret in wrong context: %v", err)
			}
			if _, err := e.enc.DecryptField(ctx, "other-key", ct, acmeEmail); !errors.Is(err, ErrKeyMismatch) {
				t.Fatalf("named other key: %v", err)
			}
			// A wrapped data key lifted out of a field ciphertext and
			// presented as a wrapped secret must not unwrap.
			parsed, _ := ParseCiphertext(ct)
			lifted, _ := secretCiphertext(parsed.KeyName, parsed.KeyVersion, parsed.WrappedKey)
			if dk, err := e.enc.DecryptField(ctx, e.key, lifted, acmeEmail); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("lifted data key unwrapped (%d bytes): %v", len(dk), err)
			}
		}
	})

	t.Run("RotationKeepsOldVersions", func(t *testing.T) {
		e := setup(t, CacheConfig{})
		var cts [][]byte
		for v := 1; v <= 3; v++ {
			ct, err := e.enc.EncryptField(ctx, e.key, []byte(fmt.Sprintf("value %d", v)), acmeEmail)
			if err != nil {
				t.Fatal(err)
			}
			if p, _ := ParseCiphertext(ct); p.KeyVersion != v {
				t.Fatalf("encryption after %d rotations used version %d", v-1, p.KeyVersion)
			}
			cts = append(cts, ct)
			if v < 3 {
				rec, err := e.kr.RotateKey(ctx, e.key)
				if err != nil {
					t.Fatalf("RotateKey: %v", err)
				}
				if rec.LatestVersion() != v+1 {
					t.Fatalf("after rotation latest = %d", rec.LatestVersion())
				}
			}
		}
		for i, ct := range cts {
			got, err := e.enc.DecryptField(ctx, e.key, ct, acmeEmail)
			if err != nil || string(got) != fmt.Sprintf("value %d", i+1) {
				t.Fatalf("version %d after rotation: %q %v", i+1, got, err)
			}
		}
	})

	t.Run("Rewrap", func(t *testing.T) {
		e := setup(t, CacheConfig{})
		ct1, _ := e.enc.EncryptField(ctx, e.key, []byte("pii"), acmeEmail)
		sct1, _ := e.enc.EncryptSecret(ctx, e.key, []byte("signing key"), acmeEmail)
		same, err := e.enc.Rewrap(ctx, e.key, ct1, acmeEmail)
		if err != nil || !bytes.Equal(same, ct1) {
			t.Fatalf("rewrap at newest version changed the ciphertext: %v", err)
		}
		// Already at the newest version, a ciphertext is still authenticated:
		// in another context, or damaged, it does not pass as rewrapped.
		for _, in := range [][]byte{ct1, sct1} {
			if _, err := e.enc.Rewrap(ctx, e.key, in, Context{Tenant: "globex", Field: "email"}); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("rewrap at newest version in the wrong context: %v", err)
			}
			bad := bytes.Clone(in)
			bad[len(bad)-1] ^= 1
			if _, err := e.enc.Rewrap(ctx, e.key, bad, acmeEmail); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("rewrap of a damaged newest-version ciphertext: %v", err)
			}
		}
		if _, err := e.kr.RotateKey(ctx, e.key); err != nil {
			t.Fatal(err)
		}
		if _, err := e.kr.RotateKey(ctx, e.key); err != nil {
			t.Fatal(err)
		}
		for _, in := range [][]byte{ct1, []byte(EncodeText(ct1)), sct1} {
			out, err := e.enc.Rewrap(ctx, e.key, in, acmeEmail)
			if err != nil {
				t.Fatalf("Rewrap: %v", err)
			}
			if (in[0] == ctMagic) != (out[0] == ctMagic) {
				t.Fatal("rewrap changed the ciphertext's form")
			}
			p, err := ParseCiphertext(out)
			if err != nil || p.KeyVersion != 3 {
				t.Fatalf("rewrapped to version %d, %v", p.KeyVersion, err)
			}
			orig, _ := e.enc.DecryptField(ctx, e.key, in, acmeEmail)
			got, err := e.enc.DecryptField(ctx, e.key, out, acmeEmail)
			if err != nil || !bytes.Equal(got, orig) {
				t.Fatalf("rewrapped ciphertext decrypts to %q, %v", got, err)
			}
			if _, err := e.enc.Rewrap(ctx, e.key, in, Context{Tenant: "globex", Field: "email"}); !errors.Is(err, ErrDecrypt) {
				t.Fatalf("rewrap in the wrong context: %v", err)
			}
		}
		if e.cp.rewrap.Load() == 0 {
			t.Fatal("a wrapped secret was not rewrapped by the provider")
		}
		res := e.enc.RewrapFields(ctx, e.key, []FieldInput{{Data: ct1, Context: acmeEmail}, {Data: []byte("junk"), Context: acmeEmail}})
		if res[0].Err != nil || !errors.Is(res[1].Err, ErrMalformedCiphertext) {
			t.Fatalf("RewrapFields: %v / %v", res[0].Err, res[1].Err)
		}
	})

	t.Run("MinDecryptionVersion", func(t *testing.T) {
		e := setup(t, CacheConfig{})
		ct1, _ := e.enc.EncryptField(ctx, e.key, []byte("old"), acmeEmail)
		sct1, _ := e.enc.EncryptSecret(ctx, e.key, []byte("old secret"), acmeEmail)
		// Warm the cache with version 1's data key.
		if _, err := e.enc.DecryptField(ctx, e.key, ct1, acmeEmail); err != nil {
			t.Fatal(err)
		}
		if _, err := e.kr.SetMinDecryptionVersion(ctx, e.key, 2); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("min above latest: %v", err)
		}
		if _, err := e.kr.RotateKey(ctx, e.key); err != nil {
			t.Fatal(err)
		}
		ct2, _ := e.enc.EncryptField(ctx, e.key, []byte("new"), acmeEmail)
		if _, err := e.kr.SetMinDecryptionVersion(ctx, e.key, 2); err != nil {
			t.Fatalf("SetMinDecryptionVersion: %v", err)
		}
		for _, ct := range [][]byte{ct1, sct1} {
			if _, err := e.enc.DecryptField(ctx, e.key, ct, acmeEmail); !errors.Is(err, ErrVersionRetired) {
				t.Fatalf("retired version decrypted (cache or backend): %v", err)
			}
			if _, err := e.enc.Rewrap(ctx, e.key, ct, acmeEmail); !errors.Is(err, ErrVersionRetired) {
				t.Fatalf("retired version rewrapped: %v", err)
			}
		}
		if got, err := e.enc.DecryptField(ctx, e.key, ct2, acmeEmail); err != nil || string(got) != "new" {
			t.Fatalf("current version: %v", err)
		}
		if be.EnforcesPolicy {
			rec, _ := e.kr.Key(ctx, e.key)
			p, _ := ParseCiphertext(sct1)
			v1, _ := rec.Version(1)
			if _, err := be.Provider.Decrypt(ctx, rec, v1, p.WrappedKey, Binding{Key: e.key, Purpose: PurposeSecret, Context: acmeEmail}); !errors.Is(err, ErrVersionRetired) {
				t.Fatalf("backend itself still decrypts a retired version: %v", err)
			}
		}
		// Lowering it again is allowed (a policy, not erasure).
		if _, err := e.kr.SetMinDecryptionVersion(ctx, e.key, 1); err != nil {
			t.Fatal(err)
		}
		for _, ct := range [][]byte{ct1, sct1} {
			if _, err := e.enc.DecryptField(ctx, e.key, ct, acmeEmail); err != nil {
				t.Fatalf("reinstated version: %v", err)
			}
		}
	})

	t.Run("Tampered", func(t *testing.T) {
		e := setup(t, CacheConfig{})
		for _, kind := range []string{"field", "secret"} {
			var ct []byte
			var err error
			if kind == "field" {
				ct, err = e.enc.EncryptField(ctx, e.key, []byte("tamper me"), acmeEmail)
			} else {
				ct, err = e.enc.EncryptSecret(ctx, e.key, []byte("tamper me"), acmeEmail)
			}
			if err != nil {
				t.Fatal(err)
			}
			// The body: bytes no parser can check, only the cryptography.
			p, _ := ParseCiphertext(ct)
			inBody := func(i int) bool { return i >= len(ct)-len(p.WrappedKey) } // secret: the wrapped blob
			if kind == "field" {
				sealedAt := len(ct) - len(p.Sealed)
				inBody = func(i int) bool { return i >= sealedAt || (i >= sealedAt-4-nonceSize && i < sealedAt-4) }
			}
			for i := range ct {
				for _, flip := range []byte{0x01, 0x80} {
					bad := bytes.Clone(ct)
					bad[i] ^= flip
					pt, err := e.enc.DecryptField(ctx, e.key, bad, acmeEmail)
					if err == nil {
						t.Fatalf("%s: byte %d ^ %#x accepted (got %q)", kind, i, flip, pt)
					}
					if inBody(i) && !errors.Is(err, ErrDecrypt) {
						t.Fatalf("%s: byte %d ^ %#x in the body: %v, want ErrDecrypt", kind, i, flip, err)
					}
				}
			}
			// Appended bytes.
			if _, err := e.enc.DecryptField(ctx, e.key, append(bytes.Clone(ct), 0), acmeEmail); err == nil {
				t.Fatalf("%s: appended byte accepted", kind)
			}
		}
		// A ciphertext claiming a version the key does not have.
		ct, _ := e.enc.EncryptField(ctx, e.key, []byte("x"), acmeEmail)
		p, _ := ParseCiphertext(ct)
		p.KeyVersion = 9
		if _, err := e.enc.DecryptField(ctx, e.key, p.Marshal(), acmeEmail); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("unknown version: %v", err)
		}
	})

	t.Run("Truncated", func(t *testing.T) {
		e := setup(t, CacheConfig{})
		ct, _ := e.enc.EncryptField(ctx, e.key, []byte("truncate me, please"), acmeEmail)
		sct, _ := e.enc.EncryptSecret(ctx, e.key, []byte("truncate me too"), acmeEmail)
		// Every truncation is caught by the parser, before any backend call,
		// and says so.
		calls := e.cp.decrypt.Load()
		for _, full := range [][]byte{ct, sct, []byte(EncodeText(ct)), []byte(EncodeText(sct))} {
			for n := 0; n < len(full); n++ {
				_, err := e.enc.DecryptField(ctx, e.key, full[:n], acmeEmail)
				if !errors.Is(err, ErrMalformedCiphertext) {
					t.Fatalf("truncated to %d of %d bytes: %v, want ErrMalformedCiphertext", n, len(full), err)
				}
				if msg := err.Error(); !strings.Contains(msg, "truncated") && !strings.Contains(msg, "base64url") && !strings.Contains(msg, TextPrefix) {
					t.Fatalf("truncated to %d: unclear error %q", n, msg)
				}
				if _, rerr := e.enc.Rewrap(ctx, e.key, full[:n], acmeEmail); !errors.Is(rerr, ErrMalformedCiphertext) || rerr.Error() != err.Error() {
					t.Fatalf("rewrap of a ciphertext truncated to %d of %d bytes: %v, want %v", n, len(full), rerr, err)
				}
			}
		}
		if e.cp.decrypt.Load() != calls || e.cp.rewrap.Load() != 0 {
			t.Fatal("a truncated ciphertext reached the backend")
		}
		if _, err := e.enc.DecryptField(ctx, e.key, nil, acmeEmail); !errors.Is(err, ErrMalformedCiphertext) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("empty ciphertext: %v", err)
		}
	})

	t.Run("CacheTTLAndUseLimit", func(t *testing.T) {
		e := setup(t, CacheConfig{TTL: time.Minute, MaxUses: 3})
		enc := func(c Context) []byte {
			t.Helper()
			ct, err := e.enc.EncryptField(ctx, e.key, []byte("v"), c)
			if err != nil {
				t.Fatal(err)
			}
			return ct
		}
		wrappedOf := func(ct []byte) string { p, _ := ParseCiphertext(ct); return string(p.WrappedKey) }
		a1, a2, a3 := enc(acmeEmail), enc(acmeEmail), enc(acmeEmail)
		if n := e.cp.generate.Load(); n != 1 {
			t.Fatalf("3 encryptions within the use limit made %d backend calls, want 1", n)
		}
		if wrappedOf(a1) != wrappedOf(a2) || wrappedOf(a2) != wrappedOf(a3) {
			t.Fatal("cached data key not reused")
		}
		a4 := enc(acmeEmail)
		if n := e.cp.generate.Load(); n != 2 || wrappedOf(a4) == wrappedOf(a3) {
			t.Fatalf("4th encryption past MaxUses=3: %d backend calls, want 2 and a new data key", n)
		}
		// Another tenant or field never gets acme/email's data key.
		b1 := enc(Context{Tenant: "globex", Field: "email"})
		c1 := enc(Context{Tenant: "acme", Field: "phone"})
		if n := e.cp.generate.Load(); n != 4 || wrappedOf(b1) == wrappedOf(a4) || wrappedOf(c1) == wrappedOf(a4) {
			t.Fatalf("other contexts shared a data key (%d backend calls)", n)
		}
		// TTL: a4's entry has 2 uses left, but expires.
		e.clock.Advance(59 * time.Second)
		enc(acmeEmail)
		if n := e.cp.generate.Load(); n != 4 {
			t.Fatalf("before the TTL: %d backend calls", n)
		}
		e.clock.Advance(2 * time.Second)
		enc(acmeEmail)
		if n := e.cp.generate.Load(); n != 5 {
			t.Fatalf("after the TTL: %d backend calls, want 5", n)
		}
		// Decryption: a fresh Encryptor (cold cache) unwraps once per use limit.
		e.cp.decrypt.Store(0)
		cold := NewEncryptor(e.kr, EncryptorConfig{Cache: CacheConfig{TTL: time.Minute, MaxUses: 3}, Clock: e.clock.Now})
		for i := 0; i < 3; i++ {
			if _, err := cold.DecryptField(ctx, e.key, a1, acmeEmail); err != nil {
				t.Fatal(err)
			}
		}
		if n := e.cp.decrypt.Load(); n != 1 {
			t.Fatalf("3 decryptions made %d unwraps, want 1", n)
		}
		if _, err := cold.DecryptField(ctx, e.key, a1, acmeEmail); err != nil || e.cp.decrypt.Load() != 2 {
			t.Fatalf("use limit on decryption: %d unwraps, %v", e.cp.decrypt.Load(), err)
		}
		e.clock.Advance(2 * time.Minute)
		if _, err := cold.DecryptField(ctx, e.key, a1, acmeEmail); err != nil || e.cp.decrypt.Load() != 3 {
			t.Fatalf("TTL on decryption: %d unwraps, %v", e.cp.decrypt.Load(), err)
		}
		st := cold.CacheStats()
		if st.Exhausted == 0 || st.Expired == 0 || st.Hits == 0 {
			t.Fatalf("stats %+v", st)
		}
		// Disabled: every operation reaches the backend.
		off := NewEncryptor(e.kr, EncryptorConfig{Cache: CacheConfig{Disabled: true}})
		before := e.cp.generate.Load()
		for i := 0; i < 3; i++ {
			if _, err := off.EncryptField(ctx, e.key, []byte("v"), acmeEmail); err != nil {
				t.Fatal(err)
			}
		}
		if e.cp.generate.Load()-before != 3 {
			t.Fatal("disabled cache still cached")
		}
	})

	t.Run("Concurrency", func(t *testing.T) {
		e := setup(t, CacheConfig{MaxUses: 5})
		const workers, ops = 8, 25
		var wg sync.WaitGroup
		errc := make(chan error, workers+1)
		stop := make(chan struct{})
		wg.Add(1)
		go func() { // rotate while the workers run
			defer wg.Done()
			for i := 0; i < 3; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := e.kr.RotateKey(ctx, e.key); err != nil {
					errc <- fmt.Errorf("rotate: %w", err)
					return
				}
			}
		}()
		var workersWG sync.WaitGroup
		for w := 0; w < workers; w++ {
			workersWG.Add(1)
			go func(w int) {
				defer workersWG.Done()
				c := Context{Tenant: fmt.Sprintf("t%d", w%3), Field: "f"}
				for i := 0; i < ops; i++ {
					pt := []byte(fmt.Sprintf("worker %d op %d", w, i))
					ct, err := e.enc.EncryptField(ctx, e.key, pt, c)
					if err != nil {
						errc <- err
						return
					}
					if i%5 == 0 {
						if ct, err = e.enc.Rewrap(ctx, e.key, ct, c); err != nil {
							errc <- fmt.Errorf("rewrap: %w", err)
							return
						}
					}
					got, err := e.enc.DecryptField(ctx, e.key, ct, c)
					if err != nil || !bytes.Equal(got, pt) {
						errc <- fmt.Errorf("worker %d op %d: %q %v", w, i, got, err)
						return
					}
				}
			}(w)
		}
		workersWG.Wait()
		close(stop)
		wg.Wait()
		close(errc)
		for err := range errc {
			t.Fatal(err)
		}
		res := e.enc.EncryptFields(ctx, e.key, []FieldInput{{Data: []byte("a"), Context: acmeEmail}, {Data: []byte("b"), Context: Context{Tenant: strings.Repeat("x", 300)}}})
		if res[0].Err != nil || !errors.Is(res[1].Err, ErrInvalidArgument) {
			t.Fatalf("EncryptFields: %v / %v", res[0].Err, res[1].Err)
		}
		dec := e.enc.DecryptFields(ctx, e.key, []FieldInput{{Data: res[0].Data, Context: acmeEmail}})
		if dec[0].Err != nil || string(dec[0].Data) != "a" {
			t.Fatalf("DecryptFields: %v", dec[0].Err)
		}
	})

	t.Run("KeyLifecycle", func(t *testing.T) {
		e := setup(t, CacheConfig{})
		if _, err := e.kr.CreateKey(ctx, e.key, KeyOptions{}); !errors.Is(err, ErrKeyExists) {
			t.Fatalf("duplicate CreateKey: %v", err)
		}
		if _, err := e.kr.RotateKey(ctx, "missing-key"); !errors.Is(err, ErrKeyNotFound) {
			t.Fatalf("rotate missing: %v", err)
		}
		rec, err := e.kr.SetRotationPeriod(ctx, e.key, 24*time.Hour)
		if err != nil || rec.RotationPeriod != 24*time.Hour {
			t.Fatalf("SetRotationPeriod: %v", err)
		}
		e.clock.Advance(23 * time.Hour)
		if done, err := e.kr.RotateDue(ctx, e.clock.Now()); err != nil || len(done) != 0 {
			t.Fatalf("rotated early: %v %v", done, err)
		}
		e.clock.Advance(time.Hour)
		done, err := e.kr.RotateDue(ctx, e.clock.Now())
		if err != nil || len(done) != 1 || done[0] != e.key {
			t.Fatalf("RotateDue: %v %v", done, err)
		}
		if rec, _ := e.kr.Key(ctx, e.key); rec.LatestVersion() != 2 {
			t.Fatalf("latest after scheduled rotation: %d", rec.LatestVersion())
		}
		if done, _ := e.kr.RotateDue(ctx, e.clock.Now()); len(done) != 0 {
			t.Fatal("rotated twice for one period")
		}
	})
}
