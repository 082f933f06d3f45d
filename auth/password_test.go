package auth

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
)

// cheap parameters keep tests fast; the PHC format is the same.
var cheap = Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}

func TestHashPasswordFormat(t *testing.T) {
	phc, err := HashPassword(nil, "correct horse battery", DefaultParams)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(phc, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("unexpected PHC prefix: %s", phc)
	}
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || len(parts[4]) != 22 || len(parts[5]) != 43 {
		t.Fatalf("want 16-byte salt and 32-byte key in raw base64, got %q", parts)
	}
	ok, rehash, err := VerifyPassword(phc, "correct horse battery", DefaultParams)
	if err != nil || !ok || rehash {
		t.Fatalf("verify: ok=%v rehash=%v err=%v", ok, rehash, err)
	}
	ok, _, err = VerifyPassword(phc, "correct horse batterz", DefaultParams)
	if err != nil || ok {
		t.Fatalf("wrong password verified: ok=%v err=%v", ok, err)
	}
}

// The PHC string must carry exactly the salt read from r and the raw
// argon2id output for the parameters it names.
func TestHashPasswordEncoding(t *testing.T) {
	salt := []byte("0123456789abcdef")
	phc, err := HashPassword(bytes.NewReader(salt), "password", cheap)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(phc, "$argon2id$v=19$m=64,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$") {
		t.Fatalf("salt not encoded as raw std base64: %s", phc)
	}
	p, gotSalt, key, err := ParsePHC(phc)
	if err != nil {
		t.Fatal(err)
	}
	want := argon2.IDKey([]byte("password"), salt, 1, 64, 1, 32)
	if p != cheap || !bytes.Equal(gotSalt, salt) || !bytes.Equal(key, want) {
		t.Fatalf("round trip mismatch: %+v %x %x", p, gotSalt, key)
	}
	phc2, _ := HashPassword(nil, "password", cheap)
	if phc2 == phc {
		t.Fatal("random salt repeated")
	}
	if _, err := HashPassword(bytes.NewReader([]byte("short")), "password", cheap); err == nil {
		t.Fatal("short randomness accepted")
	}
}

func TestVerifyPasswordNeedsRehash(t *testing.T) {
	old := cheap
	phc, err := HashPassword(nil, "pw-for-rehash", old)
	if err != nil {
		t.Fatal(err)
	}
	raised := old
	raised.Time = 2
	ok, rehash, err := VerifyPassword(phc, "pw-for-rehash", raised)
	if err != nil || !ok || !rehash {
		t.Fatalf("old hash must verify and need rehash: ok=%v rehash=%v err=%v", ok, rehash, err)
	}
	ok, rehash, err = VerifyPassword(phc, "wrong", raised)
	if err != nil || ok || rehash {
		t.Fatalf("wrong password: ok=%v rehash=%v err=%v", ok, rehash, err)
	}
	// Parameters are read from the string, not from current.
	ok, rehash, _ = VerifyPassword(phc, "pw-for-rehash", old)
	if !ok || rehash {
		t.Fatalf("same params: ok=%v rehash=%v", ok, rehash)
	}
}

func TestParsePHCMalformed(t *testing.T) {
	good, err := HashPassword(nil, "x", cheap)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good, "$")
	salt, key := parts[4], parts[5]
	cases := map[string]string{
		"empty":              "",
		"argon2i":            "$argon2i$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"argon2d":            "$argon2d$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"no version":         "$argon2id$m=64,t=1,p=1$" + salt + "$" + key,
		"version 16":         "$argon2id$v=16$m=64,t=1,p=1$" + salt + "$" + key,
		"params order":       "$argon2id$v=19$t=1,m=64,p=1$" + salt + "$" + key,
		"missing p":          "$argon2id$v=19$m=64,t=1$" + salt + "$" + key,
		"extra param":        "$argon2id$v=19$m=64,t=1,p=1,k=2$" + salt + "$" + key,
		"leading zero":       "$argon2id$v=19$m=064,t=1,p=1$" + salt + "$" + key,
		"sign":               "$argon2id$v=19$m=+64,t=1,p=1$" + salt + "$" + key,
		"zero time":          "$argon2id$v=19$m=64,t=0,p=1$" + salt + "$" + key,
		"zero threads":       "$argon2id$v=19$m=64,t=1,p=0$" + salt + "$" + key,
		"threads > 255":      "$argon2id$v=19$m=64,t=1,p=256$" + salt + "$" + key,
		"memory < 8p":        "$argon2id$v=19$m=7,t=1,p=1$" + salt + "$" + key,
		"memory too big":     "$argon2id$v=19$m=4294967295,t=1,p=1$" + salt + "$" + key,
		"memory overflow":    "$argon2id$v=19$m=99999999999,t=1,p=1$" + salt + "$" + key,
		"time too big":       "$argon2id$v=19$m=64,t=1000000,p=1$" + salt + "$" + key,
		"missing hash":       "$argon2id$v=19$m=64,t=1,p=1$" + salt,
		"extra field":        "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key + "$x",
		"padded salt":        "$argon2id$v=19$m=64,t=1,p=1$" + salt + "==$" + key,
		"urlsafe salt":       "$argon2id$v=19$m=64,t=1,p=1$" + strings.Repeat("_", 22) + "$" + key,
		"short salt":         "$argon2id$v=19$m=64,t=1,p=1$AAAA$" + key,
		"short key":          "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$AAAAAAAA",
		"non-canonical bits": "$argon2id$v=19$m=64,t=1,p=1$" + salt[:21] + "B$" + key,
		"huge":               "$argon2id$v=19$m=64,t=1,p=1$" + strings.Repeat("A", 1000) + "$" + key,
		"line break in hash": "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key[:10] + "\n" + key[10:],
		"CR in salt":         "$argon2id$v=19$m=64,t=1,p=1$" + salt[:5] + "\r" + salt[5:] + "$" + key,
	}
	for name, phc := range cases {
		t.Run(name, func(t *testing.T) {
			ok, _, err := VerifyPassword(phc, "x", cheap)
			if ok || !errors.Is(err, ErrPHCMalformed) {
				t.Fatalf("want ErrPHCMalformed, got ok=%v err=%v", ok, err)
			}
		})
	}
	if _, _, _, err := ParsePHC(good); err != nil {
		t.Fatalf("good hash rejected: %v", err)
	}
}

func TestPasswordTooLongNeverHashed(t *testing.T) {
	long := strings.Repeat("a", MaxPasswordBytes+1)
	if _, err := HashPassword(nil, long, cheap); !errors.Is(err, ErrPasswordTooLong) {
		t.Fatalf("hash: %v", err)
	}
	phc, _ := HashPassword(nil, "x", cheap)
	if _, _, err := VerifyPassword(phc, long, cheap); !errors.Is(err, ErrPasswordTooLong) {
		t.Fatalf("verify: %v", err)
	}
	h := newTestHasher(t, 1)
	for _, enc := range []string{phc, ""} {
		if _, _, err := h.Verify(context.Background(), enc, long); !errors.Is(err, ErrPasswordTooLong) {
			t.Fatalf("hasher verify %q: %v", enc, err)
		}
	}
}

func newTestHasher(t testing.TB, n int) *Hasher {
	t.Helper()
	h, err := NewHasher(HasherConfig{Params: cheap, MaxConcurrent: n, AllowWeakParams: true})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestNewHasherRefusesWeakParams(t *testing.T) {
	if _, err := NewHasher(HasherConfig{Params: cheap}); !errors.Is(err, ErrWeakParams) {
		t.Fatalf("want ErrWeakParams, got %v", err)
	}
	bad := cheap
	bad.Threads = 0
	if _, err := NewHasher(HasherConfig{Params: bad, AllowWeakParams: true}); err == nil {
		t.Fatal("zero threads accepted")
	}
	h, err := NewHasher(HasherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if h.Params() != DefaultParams || cap(h.sem) < 1 {
		t.Fatalf("defaults not applied: %+v cap=%d", h.Params(), cap(h.sem))
	}
}

func TestHasherRoundTripAndDummy(t *testing.T) {
	h := newTestHasher(t, 2)
	ctx := context.Background()
	phc, err := h.Hash(ctx, "hunter2-but-longer")
	if err != nil {
		t.Fatal(err)
	}
	ok, rehash, err := h.Verify(ctx, phc, "hunter2-but-longer")
	if err != nil || !ok || rehash {
		t.Fatalf("ok=%v rehash=%v err=%v", ok, rehash, err)
	}
	// Unknown user: empty stored hash, same work, never ok.
	ok, _, err = h.Verify(ctx, "", "hunter2-but-longer")
	if err != nil || ok {
		t.Fatalf("dummy path: ok=%v err=%v", ok, err)
	}
	if _, _, _, err := ParsePHC(h.dummy); err != nil {
		t.Fatalf("dummy hash is not a valid PHC string: %v", err)
	}
	if p, _, _, _ := ParsePHC(h.dummy); p != h.Params() {
		t.Fatalf("dummy params %+v differ from hasher params %+v", p, h.Params())
	}
}

// The dummy path must cost about what a real verification costs. Measured
// with default parameters (where argon2 dominates); generous bounds keep it
// robust on a loaded machine while still catching a dummy that skips work.
func TestDummyVerifyCostsLikeRealVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("argon2 at default params")
	}
	h, err := NewHasher(HasherConfig{MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	phc, err := h.Hash(ctx, "some-password-1")
	if err != nil {
		t.Fatal(err)
	}
	once := func(enc string) time.Duration {
		start := time.Now()
		if _, _, err := h.Verify(ctx, enc, "some-password-2"); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	// The two are measured alternately and each keeps its fastest run, so a
	// burst of load from other processes slows both rather than one of them
	// (measured one after the other, 3 runs each, the check failed under a
	// parallel test run: 176 ms vs 53 ms, 139 ms vs 318 ms).
	real, dummy := time.Duration(1<<62), time.Duration(1<<62)
	for range 7 {
		real = min(real, once(phc))
		dummy = min(dummy, once(""))
	}
	if dummy < real/2 || dummy > real*2 {
		t.Fatalf("dummy verify %v vs real %v: not comparable", dummy, real)
	}
}

// gatedReader is a Hasher's randomness source that records how many hashes
// are inside it at once and holds each until the test lets it go.
type gatedReader struct {
	mu        sync.Mutex
	cur, peak int
	entered   chan struct{}
	gate      chan struct{}
}

func (g *gatedReader) Read(p []byte) (int, error) {
	g.mu.Lock()
	g.cur++
	g.peak = max(g.peak, g.cur)
	g.mu.Unlock()
	g.entered <- struct{}{}
	<-g.gate
	g.mu.Lock()
	g.cur--
	g.mu.Unlock()
	for i := range p {
		p[i] = byte(i)
	}
	return len(p), nil
}

func TestHasherBoundsConcurrency(t *testing.T) {
	const limit = 2
	g := &gatedReader{entered: make(chan struct{}), gate: make(chan struct{})}
	h, err := NewHasher(HasherConfig{Params: cheap, MaxConcurrent: limit, Rand: g, AllowWeakParams: true})
	if err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	probe := func() error { _, _, err := h.Verify(cancelled, h.dummy, "x"); return err }

	// With `limit` hashes in progress no slot is left: a caller whose
	// context is done gets its context error instead of hashing.
	var wg sync.WaitGroup
	for range limit {
		wg.Go(func() {
			if _, err := h.Hash(context.Background(), "password-123x"); err != nil {
				t.Error(err)
			}
		})
	}
	for range limit {
		<-g.entered
	}
	if err := probe(); !errors.Is(err, context.Canceled) {
		t.Fatalf("%d hashes running, yet another caller got a slot (err=%v)", limit, err)
	}
	for range limit {
		g.gate <- struct{}{}
	}
	wg.Wait()
	if err := probe(); err != nil {
		t.Fatalf("slots not released after the hashes finished: %v", err)
	}

	// Under a flood, never more than `limit` inside at once.
	g.peak = 0
	const callers = 12
	for range callers {
		wg.Go(func() {
			if _, err := h.Hash(context.Background(), "password-123x"); err != nil {
				t.Error(err)
			}
		})
	}
	for range callers {
		<-g.entered
		g.gate <- struct{}{}
	}
	wg.Wait()
	if g.peak > limit {
		t.Fatalf("peak concurrent hashes %d, limit %d", g.peak, limit)
	}
}

func TestHasherAcquireHonoursContext(t *testing.T) {
	h := newTestHasher(t, 1)
	h.sem <- struct{}{} // the only slot is taken
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Hash(ctx, "password-123x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("hash: want context.Canceled, got %v", err)
	}
	if _, _, err := h.Verify(ctx, h.dummy, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("verify: want context.Canceled, got %v", err)
	}
	if err := h.DummyVerify(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("dummy: want context.Canceled, got %v", err)
	}
	// A waiter proceeds once the slot is freed.
	done := make(chan error)
	go func() { _, err := h.Hash(context.Background(), "password-123x"); done <- err }()
	<-h.sem
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(h.sem) != 0 {
		t.Fatal("slot not released after hashing")
	}
}

func TestPasswordPolicy(t *testing.T) {
	cases := []struct {
		name, pw string
		inputs   []string
		want     error
	}{
		{"ok", "blue-Tangerine-42", nil, nil},
		{"seven runes", "abcdefg", nil, ErrPasswordTooShort},
		{"eight runes", "Zq8#kLm2", nil, nil},
		{"multibyte counts runes", "ääääääää", nil, nil},
		{"multibyte short", "äääääää", nil, ErrPasswordTooShort},
		{"too long", strings.Repeat("x", MaxPasswordBytes+1), nil, ErrPasswordTooLong},
		{"max length", strings.Repeat("xy", MaxPasswordBytes/2), nil, nil},
		{"invalid utf8", "abcdefgh\xff", nil, ErrPasswordInvalidUTF8},
		{"common", "password123", nil, ErrPasswordCommon},
		{"common case-insensitive", "PassWord123", nil, ErrPasswordCommon},
		{"common walk", "qwertyuiop", nil, ErrPasswordCommon},
		{"common digits", "12345678", nil, ErrPasswordCommon},
		{"common leet", "p@ssw0rd", nil, ErrPasswordCommon},
		{"common keyboard column", "1qaz2wsx", nil, ErrPasswordCommon},
		{"common with year", "summer2024", nil, ErrPasswordCommon},
		{"equals username", "Annabelle-Smith", []string{"annabelle-smith"}, ErrPasswordMatchesUser},
		{"empty inputs ignored", "blue-Tangerine-42", []string{""}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ValidatePassword(c.pw, c.inputs...)
			if !errors.Is(err, c.want) || (c.want == nil && err != nil) {
				t.Fatalf("ValidatePassword(%.20q) = %v, want %v", c.pw, err, c.want)
			}
		})
	}
}

func TestCommonPasswordList(t *testing.T) {
	set := commonPasswords()
	if len(set) < 3000 {
		t.Fatalf("common password list has only %d entries", len(set))
	}
	for pw := range set {
		if pw != strings.ToLower(pw) || len([]rune(pw)) < 8 {
			t.Fatalf("list entry %q is not lower-case or is shorter than 8", pw)
		}
	}
	for _, pw := range []string{"iloveyou", "sunshine1", "football", "trustno1!", "administrator", "letmein123"} {
		if !IsCommonPassword(pw) {
			t.Errorf("%q missing from the common list", pw)
		}
	}
}
