package auth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Params are the Argon2id cost parameters. They are written into every PHC
// string, so they can be raised later: old hashes keep verifying and report
// needsRehash.
type Params struct {
	Memory  uint32 // KiB
	Time    uint32 // passes
	Threads uint8  // lanes
	SaltLen uint32 // bytes
	KeyLen  uint32 // bytes
}

// DefaultParams are OWASP's first Argon2id recommendation (DESIGN.md §4):
// 19 MiB, 2 passes, 1 lane; ~19 ms per hash on the reference machine.
var DefaultParams = Params{Memory: 19456, Time: 2, Threads: 1, SaltLen: 16, KeyLen: 32}

// The floor NewHasher enforces unless HasherConfig.AllowWeakParams is set
// (tests only). OWASP's Argon2id settings trade memory for passes, from
// m=47104,t=1 to m=7168,t=5; all have at least 7 MiB and 35840 KiB·passes.
const (
	MinMemoryKiB     = 7168
	MinWorkKiBPasses = 7168 * 5
	MinSaltLen       = 16
	MinKeyLen        = 16
)

// MaxPasswordBytes bounds the work done for one password (and the request
// body the API must accept). Longer passwords are refused by the policy, by
// Hash and by Verify.
const MaxPasswordBytes = 1024

// paramLimits are the sanity bounds for parameters read from a PHC string or
// configured. They stop a corrupt stored hash (m=4 GiB, t=10^9) from turning
// one login into an outage; they are not a security floor.
type paramLimits struct {
	maxMemory  uint32 // KiB
	maxTime    uint32
	maxThreads uint8
}

var defaultLimits = paramLimits{maxMemory: 1 << 20 /* 1 GiB */, maxTime: 32, maxThreads: 64}

const (
	minSaltLen, maxSaltLen = 8, 64
	minKeyLen, maxKeyLen   = 16, 64
	argonVersion           = argon2.Version // 0x13 = 19
	phcPrefix              = "$argon2id$v=19$"
)

// Validate checks the parameters are usable (not that they are strong; see
// MinParams).
func (p Params) Validate() error { return p.validate(defaultLimits) }

func (p Params) validate(l paramLimits) error {
	switch {
	case p.Threads < 1 || p.Threads > l.maxThreads:
		return fmt.Errorf("auth: argon2id threads %d out of range [1,%d]", p.Threads, l.maxThreads)
	case p.Time < 1 || p.Time > l.maxTime:
		return fmt.Errorf("auth: argon2id time %d out of range [1,%d]", p.Time, l.maxTime)
	case p.Memory < 8*uint32(p.Threads) || p.Memory > l.maxMemory:
		return fmt.Errorf("auth: argon2id memory %d KiB out of range [%d,%d]", p.Memory, 8*uint32(p.Threads), l.maxMemory)
	case p.SaltLen < minSaltLen || p.SaltLen > maxSaltLen:
		return fmt.Errorf("auth: argon2id salt length %d out of range [%d,%d]", p.SaltLen, minSaltLen, maxSaltLen)
	case p.KeyLen < minKeyLen || p.KeyLen > maxKeyLen:
		return fmt.Errorf("auth: argon2id key length %d out of range [%d,%d]", p.KeyLen, minKeyLen, maxKeyLen)
	}
	return nil
}

// strong reports whether p meets the floor above (lanes add no work for an
// attacker, so they do not count).
func (p Params) strong() bool {
	return p.Memory >= MinMemoryKiB && uint64(p.Memory)*uint64(p.Time) >= MinWorkKiBPasses &&
		p.SaltLen >= MinSaltLen && p.KeyLen >= MinKeyLen
}

// HashPassword hashes password with fresh salt from r (crypto/rand.Reader when
// nil) and returns the PHC string
//
//	$argon2id$v=19$m=19456,t=2,p=1$<salt, base64 std raw>$<hash, base64 std raw>
//
// It is CPU- and memory-heavy: servers should go through a Hasher, which bounds
// concurrency. Hash before proposing: the state machine stores the string.
func HashPassword(r io.Reader, password string, p Params) (string, error) {
	if len(password) > MaxPasswordBytes {
		return "", ErrPasswordTooLong
	}
	if err := p.Validate(); err != nil {
		return "", err
	}
	if r == nil {
		r = rand.Reader
	}
	salt := make([]byte, p.SaltLen)
	if _, err := io.ReadFull(r, salt); err != nil {
		return "", fmt.Errorf("auth: reading salt: %w", err)
	}
	return encodePHC(p, salt, argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)), nil
}

func encodePHC(p Params, salt, key []byte) string {
	enc := base64.RawStdEncoding
	var b strings.Builder
	b.Grow(len(phcPrefix) + 32 + enc.EncodedLen(len(salt)) + enc.EncodedLen(len(key)))
	b.WriteString(phcPrefix)
	b.WriteString("m=")
	b.WriteString(strconv.FormatUint(uint64(p.Memory), 10))
	b.WriteString(",t=")
	b.WriteString(strconv.FormatUint(uint64(p.Time), 10))
	b.WriteString(",p=")
	b.WriteString(strconv.FormatUint(uint64(p.Threads), 10))
	b.WriteByte('$')
	b.WriteString(enc.EncodeToString(salt))
	b.WriteByte('$')
	b.WriteString(enc.EncodeToString(key))
	return b.String()
}

// ParsePHC parses an argon2id PHC string strictly: version 19 only, the
// parameters in the order m,t,p as canonical decimals within sane bounds,
// canonical unpadded standard base64 for salt and hash. It never panics; every
// failure matches ErrPHCMalformed.
func ParsePHC(encoded string) (p Params, salt, key []byte, err error) {
	return parsePHC(encoded, defaultLimits)
}

func parsePHC(encoded string, l paramLimits) (p Params, salt, key []byte, err error) {
	bad := func(why string) (Params, []byte, []byte, error) {
		return Params{}, nil, nil, fmt.Errorf("%w: %s", ErrPHCMalformed, why)
	}
	if len(encoded) > 512 {
		return bad("too long")
	}
	rest, ok := strings.CutPrefix(encoded, phcPrefix)
	if !ok {
		return bad("not $argon2id$v=19$")
	}
	ps, rest, ok := strings.Cut(rest, "$")
	if !ok {
		return bad("missing salt")
	}
	saltS, keyS, ok := strings.Cut(rest, "$")
	if !ok || strings.Contains(keyS, "$") {
		return bad("want exactly salt and hash after the parameters")
	}
	m, ps, ok1 := cutParam(ps, "m=", ',')
	t, ps, ok2 := cutParam(ps, "t=", ',')
	th, ps, ok3 := cutParam(ps, "p=", 0)
	if !ok1 || !ok2 || !ok3 || ps != "" || th > 255 {
		return bad("parameters must be m=<KiB>,t=<passes>,p=<lanes>")
	}
	enc := base64.RawStdEncoding.Strict()
	// encoding/base64 skips '\r' and '\n' even in strict mode: refuse them,
	// so that one hash has one spelling.
	if strings.ContainsAny(saltS, "\r\n") || strings.ContainsAny(keyS, "\r\n") {
		return bad("line breaks in base64")
	}
	if salt, err = enc.DecodeString(saltS); err != nil {
		return bad("salt is not canonical unpadded base64")
	}
	if key, err = enc.DecodeString(keyS); err != nil {
		return bad("hash is not canonical unpadded base64")
	}
	p = Params{Memory: m, Time: t, Threads: uint8(th), SaltLen: uint32(len(salt)), KeyLen: uint32(len(key))}
	if err := p.validate(l); err != nil {
		return bad(err.Error())
	}
	return p, salt, key, nil
}

// cutParam parses "<name><decimal><sep>" at the start of s. sep 0 means the
// number runs to the end of s. Decimals are canonical: 1–10 digits, no sign,
// no leading zero, fitting in uint32.
func cutParam(s, name string, sep byte) (uint32, string, bool) {
	s, ok := strings.CutPrefix(s, name)
	if !ok {
		return 0, "", false
	}
	end := len(s)
	if sep != 0 {
		if end = strings.IndexByte(s, sep); end < 0 {
			return 0, "", false
		}
	}
	num := s[:end]
	if num == "" || len(num) > 10 || (num[0] == '0' && len(num) > 1) {
		return 0, "", false
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return 0, "", false
		}
	}
	v, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, "", false
	}
	if sep != 0 {
		end++
	}
	return uint32(v), s[end:], true
}

// VerifyPassword checks password against a PHC string, recomputing with the
// parameters stored in the string, and compares in constant time.
// needsRehash is true only when ok is true and the stored parameters differ
// from current: the caller should then store a fresh HashPassword result.
// A malformed PHC string is an error (matching ErrPHCMalformed), never a panic.
func VerifyPassword(encoded, password string, current Params) (ok, needsRehash bool, err error) {
	return verifyPassword(encoded, password, current, defaultLimits)
}

func verifyPassword(encoded, password string, current Params, l paramLimits) (ok, needsRehash bool, err error) {
	p, salt, want, err := parsePHC(encoded, l)
	if err != nil {
		return false, false, err
	}
	if len(password) > MaxPasswordBytes {
		return false, false, ErrPasswordTooLong
	}
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return false, false, nil
	}
	return true, p != current, nil
}

// HasherConfig configures a Hasher.
type HasherConfig struct {
	// Params for new hashes; zero means DefaultParams.
	Params Params
	// MaxConcurrent bounds simultaneous hashes (each holds Params.Memory KiB);
	// zero means GOMAXPROCS. Argon2 is CPU-bound, so more buys no throughput.
	MaxConcurrent int
	// Rand supplies salts; nil means crypto/rand.Reader.
	Rand io.Reader
	// AllowWeakParams lets Params fall below MinParams. For tests only.
	AllowWeakParams bool
}

// Hasher hashes and verifies passwords with a bounded number of concurrent
// Argon2id computations, so a login flood queues (and times out with its
// request context) instead of exhausting memory. Peak memory is about
// MaxConcurrent × Params.Memory. Safe for concurrent use.
type Hasher struct {
	params Params
	rand   io.Reader
	sem    chan struct{}
	dummy  string // a PHC string at params, verified for unknown users
}

// NewHasher validates cfg and precomputes the dummy hash (one Argon2id run).
func NewHasher(cfg HasherConfig) (*Hasher, error) {
	if cfg.Params == (Params{}) {
		cfg.Params = DefaultParams
	}
	if err := cfg.Params.Validate(); err != nil {
		return nil, err
	}
	if !cfg.AllowWeakParams && !cfg.Params.strong() {
		return nil, fmt.Errorf("%w: have %+v, want m ≥ %d KiB, m·t ≥ %d, salt ≥ %d and key ≥ %d bytes",
			ErrWeakParams, cfg.Params, MinMemoryKiB, MinWorkKiBPasses, MinSaltLen, MinKeyLen)
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = runtime.GOMAXPROCS(0)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	h := &Hasher{params: cfg.Params, rand: cfg.Rand, sem: make(chan struct{}, cfg.MaxConcurrent)}
	// The dummy's salt and password need not be secret: its only job is to
	// cost exactly what a real verification at the current parameters costs.
	salt := make([]byte, cfg.Params.SaltLen)
	h.dummy = encodePHC(cfg.Params, salt, argon2.IDKey([]byte("allsource-dummy"), salt, cfg.Params.Time, cfg.Params.Memory, cfg.Params.Threads, cfg.Params.KeyLen))
	return h, nil
}

// Params returns the parameters new hashes use.
func (h *Hasher) Params() Params { return h.params }

func (h *Hasher) acquire(ctx context.Context) error {
	select {
	case h.sem <- struct{}{}:
		return nil
	default:
	}
	select {
	case h.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("auth: waiting for a password hashing slot: %w", ctx.Err())
	}
}

func (h *Hasher) release() { <-h.sem }

// Hash returns a PHC string for password at the Hasher's parameters. It does
// not apply the password policy: call ValidatePassword first for new passwords.
func (h *Hasher) Hash(ctx context.Context, password string) (string, error) {
	if len(password) > MaxPasswordBytes {
		return "", ErrPasswordTooLong
	}
	if err := h.acquire(ctx); err != nil {
		return "", err
	}
	defer h.release()
	return HashPassword(h.rand, password, h.params)
}

// Verify checks password against encoded. Pass encoded == "" when the user
// does not exist: Verify then does the same work against the dummy hash and
// returns false, so unknown and known users cost the same time.
// needsRehash reports (only on success) that the stored parameters differ from
// the Hasher's and the caller should store a fresh Hash.
func (h *Hasher) Verify(ctx context.Context, encoded, password string) (ok, needsRehash bool, err error) {
	// Checked first, so that known and unknown users answer alike.
	if len(password) > MaxPasswordBytes {
		return false, false, ErrPasswordTooLong
	}
	if encoded == "" {
		return false, false, h.DummyVerify(ctx, password)
	}
	if err := h.acquire(ctx); err != nil {
		return false, false, err
	}
	defer h.release()
	return VerifyPassword(encoded, password, h.params)
}

// DummyVerify spends the time of one verification at the current parameters
// and learns nothing. Use it on every path that rejects a login without a
// stored hash (unknown user, disabled user), before answering.
func (h *Hasher) DummyVerify(ctx context.Context, password string) error {
	if len(password) > MaxPasswordBytes {
		return ErrPasswordTooLong
	}
	if err := h.acquire(ctx); err != nil {
		return err
	}
	defer h.release()
	_, _, err := VerifyPassword(h.dummy, password, h.params)
	return err
}
