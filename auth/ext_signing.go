package auth

import "slices"

// HS256Secret returns a copy of an HS256 key's secret (nil for other keys).
// Servers hand it, sealed, to edges that must verify HS256 tokens.
func (k *SigningKey) HS256Secret() []byte {
	if k == nil || k.Alg != AlgHS256 {
		return nil
	}
	return slices.Clone(k.secret)
}
