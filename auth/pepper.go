package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"
)

// MinPepperBytes is the minimum length of a pepper and of an HS256 secret.
const MinPepperBytes = 32

// KeyHash is the keyed hash (HMAC-SHA-256 under the server pepper) under which
// an API key secret, refresh token, operator token or recovery code is stored.
// It is what travels through raft and to the edges; the raw secret never does.
// Its text form (JSON) is 64 lower-case hex characters.
type KeyHash [sha256.Size]byte

// String returns the hash as lower-case hex.
func (h KeyHash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is the zero hash (never a real hash).
func (h KeyHash) IsZero() bool { return h == KeyHash{} }

// Equal compares in constant time.
func (h KeyHash) Equal(o KeyHash) bool { return subtle.ConstantTimeCompare(h[:], o[:]) == 1 }

// MarshalText implements encoding.TextMarshaler.
func (h KeyHash) MarshalText() ([]byte, error) {
	b := make([]byte, hex.EncodedLen(len(h)))
	hex.Encode(b, h[:])
	return b, nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *KeyHash) UnmarshalText(b []byte) error {
	if len(b) != hex.EncodedLen(len(h)) {
		return fmt.Errorf("auth: key hash must be %d hex characters", hex.EncodedLen(len(h)))
	}
	var v KeyHash
	if _, err := hex.Decode(v[:], b); err != nil {
		return fmt.Errorf("auth: key hash: %w", err)
	}
	*h = v
	return nil
}

// ParseKeyHash parses the hex form of a KeyHash.
func ParseKeyHash(s string) (KeyHash, error) {
	var h KeyHash
	err := h.UnmarshalText([]byte(s))
	return h, err
}

// Pepper is the server-wide secret key of the keyed hashes. It holds
// ready-keyed HMAC-SHA-256 states in a pool, so hashing on the edge's request
// path neither re-derives the HMAC pads nor allocates. Safe for concurrent use.
//
// Every message is prefixed by its kind ("ask_", "asr_", "aso\x00",
// "rc\x00"), so a hash of one kind of credential never verifies as another.
type Pepper struct {
	pool sync.Pool
}

type macState struct {
	h   hash.Hash
	buf [128]byte
	n   int
	sum [sha256.Size]byte
}

// NewPepper copies secret, which must be at least 32 bytes of key material
// (e.g. 32 random bytes, unwrapped from KMS at start-up).
func NewPepper(secret []byte) (*Pepper, error) {
	if len(secret) < MinPepperBytes {
		return nil, ErrPepperTooShort
	}
	key := append([]byte(nil), secret...)
	p := &Pepper{}
	p.pool.New = func() any { return &macState{h: hmac.New(sha256.New, key)} }
	return p, nil
}

func (st *macState) write(s string) {
	for len(s) > 0 {
		if st.n == len(st.buf) {
			st.flush()
		}
		c := copy(st.buf[st.n:], s)
		st.n += c
		s = s[c:]
	}
}

func (st *macState) flush() {
	if st.n > 0 {
		st.h.Write(st.buf[:st.n])
		st.n = 0
	}
}

// mac returns HMAC(pepper, a||b||c||d).
func (p *Pepper) mac(a, b, c, d string) KeyHash {
	st := p.pool.Get().(*macState)
	st.h.Reset()
	st.n = 0
	st.write(a)
	st.write(b)
	st.write(c)
	st.write(d)
	st.flush()
	var out KeyHash
	copy(out[:], st.h.Sum(st.sum[:0]))
	p.pool.Put(st)
	return out
}

// equalMAC compares HMAC(pepper, a||b||c||d) with want in constant time.
func (p *Pepper) equalMAC(want KeyHash, a, b, c, d string) bool {
	got := p.mac(a, b, c, d)
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}
