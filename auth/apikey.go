package auth

import "io"

// APIKeyPrefix starts every API key: ask_<32 hex id>_<43 base62 secret><6 base62 checksum>.
const APIKeyPrefix = "ask_"

// APIKey is a parsed API key. ID is the lookup key (stored in clear, shown in
// listings); Secret is never stored: only HashAPIKey's result is. Printing an
// APIKey with fmt shows the id only.
type APIKey struct {
	ID     string
	Secret string
}

// String redacts the secret.
func (k APIKey) String() string { return APIKeyPrefix + k.ID + "_<redacted>" }

// GoString redacts the secret.
func (k APIKey) GoString() string { return "auth.APIKey{ID:" + k.ID + ", Secret:<redacted>}" }

// NewAPIKey generates an API key from r (crypto/rand.Reader when nil). raw is
// shown to the user once; store key.ID and HashAPIKey(key). Generate before
// proposing: the state machine never sees the raw key.
func NewAPIKey(r io.Reader) (raw string, key APIKey, err error) {
	raw, id, secret, err := newIDToken(r, APIKeyPrefix, "")
	if err != nil {
		return "", APIKey{}, err
	}
	return raw, APIKey{ID: id, Secret: secret}, nil
}

// ParseAPIKey checks the format and checksum of raw without any lookup and
// without allocating (the result's strings are substrings of raw). Errors are
// ErrAPIKeyMalformed or ErrAPIKeyChecksum (which matches ErrAPIKeyMalformed).
func ParseAPIKey(raw string) (APIKey, error) {
	id, secret, res := parseIDToken(raw, APIKeyPrefix)
	switch res {
	case parsedOK:
		return APIKey{ID: id, Secret: secret}, nil
	case parsedBadChecksum:
		return APIKey{}, ErrAPIKeyChecksum
	default:
		return APIKey{}, ErrAPIKeyMalformed
	}
}

// HashAPIKey returns HMAC-SHA-256(pepper, "ask_" || id || "_" || secret), the
// value to store for the key.
func (p *Pepper) HashAPIKey(k APIKey) KeyHash {
	return p.mac(APIKeyPrefix, k.ID, "_", k.Secret)
}

// VerifyAPIKeySecret reports whether k's keyed hash equals stored, comparing
// in constant time. It does not allocate. A nil pepper or zero stored hash
// never verifies.
func VerifyAPIKeySecret(p *Pepper, k APIKey, stored KeyHash) bool {
	if p == nil || stored.IsZero() {
		return false
	}
	return p.equalMAC(stored, APIKeyPrefix, k.ID, "_", k.Secret)
}
