package auth

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"slices"
)

// MaxJWKSBytes and MaxJWKSKeys bound what ParseJWKS accepts.
const (
	MaxJWKSBytes = 1 << 20
	MaxJWKSKeys  = 100
)

// jwk is one RFC 7517 key; only OKP/Ed25519 (RFC 8037) keys are produced and
// used.
type jwk struct {
	Kty    string   `json:"kty"`
	Crv    string   `json:"crv,omitempty"`
	X      string   `json:"x,omitempty"`
	D      string   `json:"d,omitempty"` // private part: present means refuse
	K      string   `json:"k,omitempty"` // symmetric key: present means refuse
	KID    string   `json:"kid"`
	Alg    string   `json:"alg,omitempty"`
	Use    string   `json:"use,omitempty"`
	KeyOps []string `json:"key_ops,omitempty"`
}

type jwks struct {
	Keys []jwk `json:"keys"`
}

// MarshalJWKS returns the public JWKS document for the key set (served at
// /.well-known/jwks.json):
//
//	{"keys":[{"kty":"OKP","crv":"Ed25519","x":"…","kid":"…","alg":"EdDSA","use":"sig"}]}
//
// Only active and verify-only Ed25519 keys appear. HS256 secrets are never
// published, and retired keys verify nothing, so they are left out.
func MarshalJWKS(ks *KeySet) ([]byte, error) {
	doc := jwks{Keys: []jwk{}}
	for _, k := range ks.Keys() {
		if k.alg != AlgEdDSA || k.state == KeyRetired {
			continue
		}
		doc.Keys = append(doc.Keys, jwk{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(k.pub), KID: k.kid, Alg: string(AlgEdDSA), Use: "sig"})
	}
	return json.Marshal(doc)
}

// ParseJWKS builds a KeySet (all keys KeyVerifyOnly: an edge verifies, it
// never signs) from a JWKS document. Keys of other types are skipped, as RFC
// 7517 §5 asks; an Ed25519 key must have kid, a 32-byte x, alg EdDSA or none,
// use "sig" or none, and no private part. A document that carries private or
// symmetric key material, duplicate kids, or no usable key at all is refused.
func ParseJWKS(data []byte) (*KeySet, error) {
	if len(data) > MaxJWKSBytes {
		return nil, fmt.Errorf("%w: JWKS larger than %d bytes", ErrInvalidKey, MaxJWKSBytes)
	}
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' {
		return nil, fmt.Errorf("%w: JWKS is not a JSON object", ErrInvalidKey)
	}
	var doc jwks
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%w: JWKS: %v", ErrInvalidKey, err)
	}
	if len(doc.Keys) > MaxJWKSKeys {
		return nil, fmt.Errorf("%w: JWKS has more than %d keys", ErrInvalidKey, MaxJWKSKeys)
	}
	var keys []*VerificationKey
	for i, j := range doc.Keys {
		if j.D != "" || j.K != "" {
			return nil, fmt.Errorf("%w: JWKS key %d carries private or symmetric key material", ErrInvalidKey, i)
		}
		if j.Kty != "OKP" || j.Crv != "Ed25519" {
			continue
		}
		if j.Alg != "" && j.Alg != string(AlgEdDSA) {
			return nil, fmt.Errorf("%w: JWKS key %q: alg %q with an Ed25519 key", ErrInvalidKey, j.KID, j.Alg)
		}
		if j.Use != "" && j.Use != "sig" {
			continue
		}
		if len(j.KeyOps) > 0 && !slices.Contains(j.KeyOps, "verify") {
			continue
		}
		pub, err := decodeB64(j.X)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: JWKS key %q: x must be %d bytes of base64url", ErrInvalidKey, j.KID, ed25519.PublicKeySize)
		}
		k, err := NewEd25519VerificationKey(j.KID, pub, KeyVerifyOnly)
		if err != nil {
			return nil, fmt.Errorf("JWKS key %d: %w", i, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: JWKS has no Ed25519 signature key", ErrInvalidKey)
	}
	return NewKeySet(keys...)
}
