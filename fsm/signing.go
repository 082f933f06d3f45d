package fsm

import (
	"crypto/ed25519"

	"time"

	"github.com/allsource/guard/auth"
)

// SigningKey is one version of the token-signing key. The private part is
// stored only wrapped by the KMS (Wrapped, made on an API server); the public
// part of an Ed25519 key is stored in the clear so edges and the JWKS endpoint
// need no KMS. HS256 keys have no public part: verifying needs the secret.
type SigningKey struct {
	KID       string        `json:"kid"`
	Alg       auth.Alg      `json:"alg"`
	PublicKey []byte        `json:"public_key,omitempty"`
	Wrapped   []byte        `json:"wrapped"`
	KeyRef    string        `json:"key_ref"` // which KMS key wraps it
	State     auth.KeyState `json:"state"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// AddSigningKeyCmd installs a new active signing key; the previously active
// key becomes verify-only (tokens it signed keep verifying until retired).
type AddSigningKeyCmd struct {
	KID       string   `json:"kid"`
	Alg       auth.Alg `json:"alg"`
	PublicKey []byte   `json:"public_key,omitempty"`
	Wrapped   []byte   `json:"wrapped"`
	KeyRef    string   `json:"key_ref"`
	// IfNone installs the key only when the cluster has no active key (two
	// servers racing to create the first key keep one).
	IfNone bool `json:"if_none,omitempty"`
}

// SetSigningKeyStateCmd moves a key to verify-only or retired. The active key
// cannot be retired: rotate first.
type SetSigningKeyStateCmd struct {
	KID   string        `json:"kid"`
	State auth.KeyState `json:"state"`
}

func applyAddSigningKey(w *wtx, c *Command) (any, *Error) {
	var p AddSigningKeyCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if !auth.ValidKID(p.KID) {
		return nil, errf(CodeInvalidArgument, "kid must be 1-64 characters of [A-Za-z0-9._-]")
	}
	switch p.Alg {
	case auth.AlgEdDSA:
		if len(p.PublicKey) != ed25519.PublicKeySize {
			return nil, errf(CodeInvalidArgument, "an EdDSA key needs its %d-byte public key", ed25519.PublicKeySize)
		}
	case auth.AlgHS256:
		if len(p.PublicKey) != 0 {
			return nil, errf(CodeInvalidArgument, "an HS256 key has no public part")
		}
	default:
		return nil, errf(CodeInvalidArgument, "alg must be EdDSA or HS256")
	}
	if len(p.Wrapped) == 0 || len(p.Wrapped) > 8192 {
		return nil, errf(CodeInvalidArgument, "the wrapped private key is required (at most 8 KiB)")
	}
	if e := validName("key_ref", p.KeyRef, 256); e != nil {
		return nil, e
	}
	b := w.tx.Bucket(bSigningKeys)
	if b.Get([]byte(p.KID)) != nil {
		return nil, errf(CodeConflict, "signing key %q exists", p.KID)
	}
	keys := w.reader().SigningKeys()
	now := w.now()
	for _, k := range keys {
		if k.State != auth.KeyActive {
			continue
		}
		if p.IfNone {
			return k, nil
		}
		k.State, k.UpdatedAt = auth.KeyVerifyOnly, now
		putJSON(b, []byte(k.KID), k)
		w.changed(ChangeSigningKey, "", k.KID, false)
	}
	k := &SigningKey{KID: p.KID, Alg: p.Alg, PublicKey: p.PublicKey, Wrapped: p.Wrapped, KeyRef: p.KeyRef,
		State: auth.KeyActive, CreatedAt: now, UpdatedAt: now}
	putJSON(b, []byte(p.KID), k)
	w.changed(ChangeSigningKey, "", p.KID, false)
	w.audit("", ActionSigningKeyRotated, "signing-key/"+p.KID, OutcomeSuccess, map[string]string{"alg": string(p.Alg)})
	return k, nil
}

func applySetSigningKeyState(w *wtx, c *Command) (any, *Error) {
	var p SetSigningKeyStateCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if p.State != auth.KeyVerifyOnly && p.State != auth.KeyRetired {
		return nil, errf(CodeInvalidArgument, "state must be verify-only or retired")
	}
	b := w.tx.Bucket(bSigningKeys)
	var k SigningKey
	if !getJSON(b, []byte(p.KID), &k) {
		return nil, errf(CodeNotFound, "signing key not found")
	}
	if k.State == auth.KeyActive {
		return nil, errf(CodeFailedPrecondition, "the active key cannot change state; rotate first")
	}
	if k.State == auth.KeyRetired {
		return nil, errf(CodeFailedPrecondition, "a retired key stays retired")
	}
	if k.State == p.State {
		return &k, nil
	}
	k.State, k.UpdatedAt = p.State, w.now()
	putJSON(b, []byte(k.KID), &k)
	w.changed(ChangeSigningKey, "", k.KID, false)
	w.audit("", ActionConfigChanged, "signing-key/"+k.KID, OutcomeSuccess, map[string]string{"state": string(p.State)})
	return &k, nil
}

// SigningKeys returns every signing key version in kid order.
func (r *Reader) SigningKeys() []*SigningKey {
	var out []*SigningKey
	_ = r.tx.Bucket(bSigningKeys).ForEach(func(k, v []byte) error {
		var s SigningKey
		mustUnmarshal(k, v, &s)
		out = append(out, &s)
		return nil
	})
	return out
}
