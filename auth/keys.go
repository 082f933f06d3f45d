package auth

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Alg is a JWS algorithm this package signs and verifies with.
type Alg string

const (
	AlgEdDSA Alg = "EdDSA" // Ed25519 (RFC 8037); the default
	AlgHS256 Alg = "HS256" // HMAC-SHA-256 with a ≥32-byte secret; compatibility only
)

// KeyState is the life-cycle state of a signing key version.
type KeyState string

const (
	KeyActive     KeyState = "active"      // signs new tokens and verifies
	KeyVerifyOnly KeyState = "verify-only" // verifies tokens signed before rotation
	KeyRetired    KeyState = "retired"     // verifies nothing; kept for the record
)

// Valid reports whether s is one of the three states.
func (s KeyState) Valid() bool {
	return s == KeyActive || s == KeyVerifyOnly || s == KeyRetired
}

// ValidKID reports whether kid is a usable key id: 1–64 characters of
// [A-Za-z0-9._-]. Restricting it keeps headers, JWKS and logs unsurprising.
func ValidKID(kid string) bool {
	if len(kid) == 0 || len(kid) > 64 {
		return false
	}
	for i := 0; i < len(kid); i++ {
		c := kid[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// SigningKey is one version of the token-signing key, private part included.
// The server stores it wrapped by KMS (MarshalBinary → KMS encrypt) and keeps
// it only in memory unwrapped; edges never hold one.
type SigningKey struct {
	KID     string
	Alg     Alg
	Created time.Time

	priv   ed25519.PrivateKey // AlgEdDSA
	secret []byte             // AlgHS256
}

// GenerateSigningKey makes a new Ed25519 signing key with randomness from r
// (crypto/rand.Reader when nil). Generate before proposing: the state machine
// only stores the wrapped result.
func GenerateSigningKey(r io.Reader, kid string, now time.Time) (*SigningKey, error) {
	if !ValidKID(kid) {
		return nil, fmt.Errorf("%w: kid must be 1-64 characters of [A-Za-z0-9._-]", ErrInvalidKey)
	}
	_, priv, err := ed25519.GenerateKey(randReader(r))
	if err != nil {
		return nil, fmt.Errorf("auth: generating Ed25519 key: %w", err)
	}
	return &SigningKey{KID: kid, Alg: AlgEdDSA, Created: now.UTC(), priv: priv}, nil
}

// NewHS256SigningKey wraps an HMAC secret of at least 32 bytes (copied).
// Anyone who can verify HS256 tokens can also mint them: prefer EdDSA.
func NewHS256SigningKey(kid string, secret []byte, now time.Time) (*SigningKey, error) {
	if !ValidKID(kid) {
		return nil, fmt.Errorf("%w: kid must be 1-64 characters of [A-Za-z0-9._-]", ErrInvalidKey)
	}
	if len(secret) < MinPepperBytes {
		return nil, ErrSecretTooShort
	}
	return &SigningKey{KID: kid, Alg: AlgHS256, Created: now.UTC(), secret: slices.Clone(secret)}, nil
}

// Ed25519PrivateKey returns the private key (nil for HS256 keys).
func (k *SigningKey) Ed25519PrivateKey() ed25519.PrivateKey { return k.priv }

// VerificationKey returns the verifying half of k in the given state: the
// public key for EdDSA, the secret itself for HS256.
func (k *SigningKey) VerificationKey(state KeyState) (*VerificationKey, error) {
	switch k.Alg {
	case AlgEdDSA:
		return NewEd25519VerificationKey(k.KID, k.priv.Public().(ed25519.PublicKey), state)
	case AlgHS256:
		return NewHS256VerificationKey(k.KID, k.secret, state)
	}
	return nil, fmt.Errorf("%w: unsupported alg %q", ErrInvalidKey, k.Alg)
}

// String never prints key material.
func (k *SigningKey) String() string {
	return fmt.Sprintf("SigningKey{kid=%s alg=%s created=%s}", k.KID, k.Alg, k.Created.Format(time.RFC3339))
}

// GoString never prints key material.
func (k *SigningKey) GoString() string { return k.String() }

// signingKeyJSON is the serialised private key: {"v":1,"kid":…,"alg":…,
// "created":RFC 3339,"key":base64url(Ed25519 seed | HMAC secret)}.
type signingKeyJSON struct {
	V       int       `json:"v"`
	KID     string    `json:"kid"`
	Alg     Alg       `json:"alg"`
	Created time.Time `json:"created"`
	Key     string    `json:"key"`
}

// MarshalBinary serialises the key, private part included (as JSON, version
// 1; Ed25519 keys as their 32-byte seed). Wrap the result with KMS before it
// leaves memory.
func (k *SigningKey) MarshalBinary() ([]byte, error) {
	var raw []byte
	switch k.Alg {
	case AlgEdDSA:
		if len(k.priv) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("%w: no Ed25519 private key", ErrInvalidKey)
		}
		raw = k.priv.Seed()
	case AlgHS256:
		if len(k.secret) < MinPepperBytes {
			return nil, ErrSecretTooShort
		}
		raw = k.secret
	default:
		return nil, fmt.Errorf("%w: unsupported alg %q", ErrInvalidKey, k.Alg)
	}
	return json.Marshal(signingKeyJSON{V: 1, KID: k.KID, Alg: k.Alg, Created: k.Created.UTC(), Key: base64.RawURLEncoding.EncodeToString(raw)})
}

// ParseSigningKey is the inverse of MarshalBinary.
func ParseSigningKey(b []byte) (*SigningKey, error) {
	var j signingKeyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	if j.V != 1 {
		return nil, fmt.Errorf("%w: unsupported serialisation version %d", ErrInvalidKey, j.V)
	}
	raw, err := decodeB64(j.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: key is not base64url", ErrInvalidKey)
	}
	switch j.Alg {
	case AlgEdDSA:
		if len(raw) != ed25519.SeedSize {
			return nil, fmt.Errorf("%w: Ed25519 seed must be %d bytes", ErrInvalidKey, ed25519.SeedSize)
		}
		if !ValidKID(j.KID) {
			return nil, fmt.Errorf("%w: invalid kid", ErrInvalidKey)
		}
		return &SigningKey{KID: j.KID, Alg: AlgEdDSA, Created: j.Created, priv: ed25519.NewKeyFromSeed(raw)}, nil
	case AlgHS256:
		return NewHS256SigningKey(j.KID, raw, j.Created)
	}
	return nil, fmt.Errorf("%w: unsupported alg %q", ErrInvalidKey, j.Alg)
}

// VerificationKey is the verifying half of one signing key version, with its
// state. It is immutable and safe for concurrent use.
type VerificationKey struct {
	kid    string
	alg    Alg
	state  KeyState
	pub    ed25519.PublicKey // AlgEdDSA
	secret []byte            // AlgHS256
	macs   *sync.Pool        // AlgHS256: keyed HMAC states
}

// NewEd25519VerificationKey makes an EdDSA verification key (pub is copied).
func NewEd25519VerificationKey(kid string, pub ed25519.PublicKey, state KeyState) (*VerificationKey, error) {
	if !ValidKID(kid) {
		return nil, fmt.Errorf("%w: invalid kid", ErrInvalidKey)
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: Ed25519 public key must be %d bytes", ErrInvalidKey, ed25519.PublicKeySize)
	}
	if !state.Valid() {
		return nil, fmt.Errorf("%w: invalid state %q", ErrInvalidKey, state)
	}
	return &VerificationKey{kid: kid, alg: AlgEdDSA, state: state, pub: slices.Clone(pub)}, nil
}

// NewHS256VerificationKey makes an HS256 verification key from a secret of
// at least 32 bytes (copied).
func NewHS256VerificationKey(kid string, secret []byte, state KeyState) (*VerificationKey, error) {
	if !ValidKID(kid) {
		return nil, fmt.Errorf("%w: invalid kid", ErrInvalidKey)
	}
	if len(secret) < MinPepperBytes {
		return nil, ErrSecretTooShort
	}
	if !state.Valid() {
		return nil, fmt.Errorf("%w: invalid state %q", ErrInvalidKey, state)
	}
	secret = slices.Clone(secret)
	return &VerificationKey{kid: kid, alg: AlgHS256, state: state, secret: secret,
		macs: &sync.Pool{New: func() any { return &macState{h: hmac.New(sha256.New, secret)} }}}, nil
}

func (k *VerificationKey) KID() string     { return k.kid }
func (k *VerificationKey) Alg() Alg        { return k.alg }
func (k *VerificationKey) State() KeyState { return k.state }

// Ed25519PublicKey returns the public key (nil for HS256 keys).
func (k *VerificationKey) Ed25519PublicKey() ed25519.PublicKey { return k.pub }

// WithState returns a copy of k in another state.
func (k *VerificationKey) WithState(s KeyState) (*VerificationKey, error) {
	if !s.Valid() {
		return nil, fmt.Errorf("%w: invalid state %q", ErrInvalidKey, s)
	}
	c := *k
	c.state = s
	return &c, nil
}

// String never prints key material.
func (k *VerificationKey) String() string {
	return fmt.Sprintf("VerificationKey{kid=%s alg=%s state=%s}", k.kid, k.alg, k.state)
}

// GoString never prints key material.
func (k *VerificationKey) GoString() string { return k.String() }

// verifyHS256 checks an HS256 signature over signed in constant time,
// reusing a pooled keyed HMAC state (no pad derivation, no allocation).
func (k *VerificationKey) verifyHS256(signed string, sig []byte) bool {
	st := k.macs.Get().(*macState)
	st.h.Reset()
	st.n = 0
	st.write(signed)
	st.flush()
	ok := hmac.Equal(st.h.Sum(st.sum[:0]), sig)
	k.macs.Put(st)
	return ok
}

// KeySet is an immutable set of verification keys by kid. Build a new one
// when the keys change (edges swap it atomically). Safe for concurrent use.
type KeySet struct {
	byKID  map[string]*VerificationKey
	usable *VerificationKey // the only non-retired key, if exactly one
	// byHeader maps the exact base64url header segment that Mint writes for
	// a key ({"alg":…,"kid":…,"typ":"JWT"}) to that key, so Verify can skip
	// decoding the header of tokens this cluster minted. Any other spelling
	// takes the full parse; both reach the same decision.
	byHeader map[string]*VerificationKey
}

// NewKeySet builds a set; kids must be distinct.
func NewKeySet(keys ...*VerificationKey) (*KeySet, error) {
	s := &KeySet{byKID: make(map[string]*VerificationKey, len(keys)), byHeader: make(map[string]*VerificationKey, len(keys))}
	n := 0
	for _, k := range keys {
		if k == nil {
			return nil, fmt.Errorf("%w: nil key", ErrInvalidKey)
		}
		if (k.alg != AlgEdDSA || len(k.pub) != ed25519.PublicKeySize) && (k.alg != AlgHS256 || k.macs == nil) || !ValidKID(k.kid) {
			return nil, fmt.Errorf("%w: key not made by a constructor", ErrInvalidKey)
		}
		if _, dup := s.byKID[k.kid]; dup {
			return nil, fmt.Errorf("%w: duplicate kid %q", ErrInvalidKey, k.kid)
		}
		s.byKID[k.kid] = k
		s.byHeader[canonicalHeader(k.alg, k.kid)] = k
		if k.state != KeyRetired {
			n++
			s.usable = k
		}
	}
	if n != 1 {
		s.usable = nil
	}
	return s, nil
}

// canonicalHeader is the header segment Mint produces for alg and kid. The
// jwt library marshals its header map with sorted keys, and kids are plain
// [A-Za-z0-9._-], so the JSON needs no escaping.
func canonicalHeader(alg Alg, kid string) string {
	return b64.EncodeToString([]byte(`{"alg":"` + string(alg) + `","kid":"` + kid + `","typ":"JWT"}`))
}

// Lookup returns the key with this kid.
func (s *KeySet) Lookup(kid string) (*VerificationKey, bool) {
	if s == nil {
		return nil, false
	}
	k, ok := s.byKID[kid]
	return k, ok
}

// Len is the number of keys, retired ones included.
func (s *KeySet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.byKID)
}

// Keys returns the keys sorted by kid.
func (s *KeySet) Keys() []*VerificationKey {
	if s == nil {
		return nil
	}
	out := make([]*VerificationKey, 0, len(s.byKID))
	for _, k := range s.byKID {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b *VerificationKey) int {
		switch {
		case a.kid < b.kid:
			return -1
		case a.kid > b.kid:
			return 1
		}
		return 0
	})
	return out
}
