package auth

import (
	"crypto/subtle"
	"io"
	"slices"
)

// Refresh tokens are opaque, not JWTs:
//
//	asr_<family id: 32 hex>_<secret: 43 base62><checksum: 6 base62>
//
// The id part is the refresh family: every token obtained by rotating a
// refresh token keeps the family of the login that started it. The server
// stores one RefreshFamily per login (never a raw token) and decides each
// refresh with CheckRefresh:
//
//   - the current token            → RefreshValid: issue new tokens, Rotate the family;
//   - a token already rotated away → RefreshReused: someone replayed an old
//     token (one of the two parties holds a stolen copy), so revoke the family
//     and every access token that carries its "fam" claim;
//   - anything else                → RefreshInvalid (wrong secret for the
//     family: not proof the holder ever had a real token, so no revocation —
//     otherwise anyone who saw a family id could log its user out).
//
// Opaque tokens need a lookup anyway (rotation is state), are short, cannot be
// mistaken for access tokens, and do not depend on signing-key rotation.
// Access tokens carry the family in their "fam" claim so logout can revoke it.

// RefreshTokenPrefix starts every refresh token.
const RefreshTokenPrefix = "asr_"

// RefreshToken is a parsed refresh token. Printing it with fmt shows the
// family only.
type RefreshToken struct {
	Family string
	Secret string
}

// String redacts the secret.
func (t RefreshToken) String() string { return RefreshTokenPrefix + t.Family + "_<redacted>" }

// GoString redacts the secret.
func (t RefreshToken) GoString() string {
	return "auth.RefreshToken{Family:" + t.Family + ", Secret:<redacted>}"
}

// NewRefreshFamily starts a refresh family (at login) and returns its first
// token. r is crypto/rand.Reader when nil.
func NewRefreshFamily(r io.Reader) (raw string, tok RefreshToken, err error) {
	return NewRefreshToken(r, "")
}

// NewRefreshToken returns a fresh token of family (rotation). An empty family
// starts a new one.
func NewRefreshToken(r io.Reader, family string) (raw string, tok RefreshToken, err error) {
	raw, fam, secret, err := newIDToken(r, RefreshTokenPrefix, family)
	if err != nil {
		return "", RefreshToken{}, err
	}
	return raw, RefreshToken{Family: fam, Secret: secret}, nil
}

// ParseRefreshToken checks the format and checksum of raw without a lookup.
func ParseRefreshToken(raw string) (RefreshToken, error) {
	fam, secret, res := parseIDToken(raw, RefreshTokenPrefix)
	if res != parsedOK {
		return RefreshToken{}, ErrRefreshMalformed
	}
	return RefreshToken{Family: fam, Secret: secret}, nil
}

// HashRefreshToken returns HMAC-SHA-256(pepper, "asr_" || family || "_" || secret).
func (p *Pepper) HashRefreshToken(t RefreshToken) KeyHash {
	return p.mac(RefreshTokenPrefix, t.Family, "_", t.Secret)
}

// RefreshFamily is the server-side state of one refresh family.
type RefreshFamily struct {
	ID       string    `json:"id"`
	Current  KeyHash   `json:"current"`            // hash of the one token that may be used
	Previous []KeyHash `json:"previous,omitempty"` // hashes of rotated-away tokens, oldest first
	Revoked  bool      `json:"revoked,omitempty"`
}

// RefreshVerdict is CheckRefresh's decision.
type RefreshVerdict uint8

const (
	RefreshInvalid RefreshVerdict = iota // not a token of this family: reject
	RefreshValid                         // the current token: rotate
	RefreshReused                        // an already-rotated token: revoke the family
	RefreshRevoked                       // the family is revoked: reject
)

func (v RefreshVerdict) String() string {
	switch v {
	case RefreshValid:
		return "valid"
	case RefreshReused:
		return "reused"
	case RefreshRevoked:
		return "revoked"
	default:
		return "invalid"
	}
}

// CheckRefresh decides what to do with a presented refresh token, given its
// family's stored state. It is deterministic and compares every stored hash
// in constant time, so it may run on an API server or inside Apply.
func (p *Pepper) CheckRefresh(f RefreshFamily, t RefreshToken) RefreshVerdict {
	if p == nil || f.ID == "" || t.Family != f.ID {
		return RefreshInvalid
	}
	h := p.HashRefreshToken(t)
	current := subtle.ConstantTimeCompare(h[:], f.Current[:]) & boolInt(!f.Current.IsZero())
	old := 0
	for i := range f.Previous {
		old |= subtle.ConstantTimeCompare(h[:], f.Previous[i][:])
	}
	switch {
	case f.Revoked:
		return RefreshRevoked
	case current == 1:
		return RefreshValid
	case old == 1:
		return RefreshReused
	default:
		return RefreshInvalid
	}
}

// DefaultRefreshKeep is a reasonable keep for Rotate: reuse of any of the
// last 16 rotated tokens of a family is detected.
const DefaultRefreshKeep = 16

// Rotate returns the family state after the current token was exchanged for
// the token whose hash is next: the current hash moves to Previous, which
// keeps the newest keep entries (replays of older tokens are then just
// invalid, no longer detected as reuse). f is not modified.
func (f RefreshFamily) Rotate(next KeyHash, keep int) RefreshFamily {
	prev := append([]KeyHash(nil), f.Previous...)
	if !f.Current.IsZero() {
		prev = append(prev, f.Current)
	}
	keep = max(keep, 0)
	if len(prev) > keep {
		prev = slices.Clone(prev[len(prev)-keep:])
	}
	if len(prev) == 0 {
		prev = nil
	}
	return RefreshFamily{ID: f.ID, Current: next, Previous: prev, Revoked: f.Revoked}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
