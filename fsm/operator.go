package fsm

import (
	"time"
)

// OperatorToken is a cluster-operator credential, stored only as a hash.
type OperatorToken struct {
	ID        string    `json:"id"`
	Hash      string    `json:"hash"` // hex of the keyed/plain hash computed by the proposer
	CreatedAt time.Time `json:"created_at"`
}

// BootstrapOperatorCmd installs the first operator credential of a new cluster.
type BootstrapOperatorCmd struct {
	Token OperatorToken `json:"token"`
}

var keyOperator = []byte("operator")

func applyBootstrapOperator(w *wtx, c *Command) (any, *Error) {
	var p BootstrapOperatorCmd
	mustDecodePayload(c, &p)
	if c.Header.Principal.Kind != PrincipalSystem {
		return nil, errf(CodeForbidden, "only the cluster itself bootstraps the operator")
	}
	if p.Token.ID == "" || len(p.Token.Hash) < 32 {
		return nil, errf(CodeInvalidArgument, "operator token id and hash are required")
	}
	m := w.tx.Bucket(bMeta)
	if m.Get(keyOperator) != nil {
		return nil, errf(CodeConflict, "the cluster already has an operator")
	}
	p.Token.CreatedAt = w.now()
	putJSON(m, keyOperator, &p.Token)
	w.changed(ChangeOperator, "", p.Token.ID, false)
	w.audit("", ActionOperatorBootstrap, "operator/"+p.Token.ID, OutcomeSuccess, nil)
	return nil, nil
}

// Operator returns the operator credential record, if the cluster has one.
func (r *Reader) Operator() (*OperatorToken, bool) {
	var t OperatorToken
	if !getJSON(r.tx.Bucket(bMeta), keyOperator, &t) {
		return nil, false
	}
	return &t, true
}

// Secret is cluster-wide secret material stored only in wrapped form (the API-key
// pepper, for one): the plaintext never enters the raft log.
type Secret struct {
	Name      string    `json:"name"`
	Wrapped   []byte    `json:"wrapped"` // ciphertext from the KMS
	KeyRef    string    `json:"key_ref"` // which KMS key wraps it
	CreatedAt time.Time `json:"created_at"`
}

// SetSecretCmd stores a wrapped secret; it refuses to overwrite one unless
// Replace is set (so two servers racing to create the pepper keep the first).
type SetSecretCmd struct {
	Secret  Secret `json:"secret"`
	Replace bool   `json:"replace,omitempty"`
}

func applySetSecret(w *wtx, c *Command) (any, *Error) {
	var p SetSecretCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if e := validName("secret name", p.Secret.Name, 64); e != nil || p.Secret.Name == "" || len(p.Secret.Wrapped) == 0 {
		return nil, errf(CodeInvalidArgument, "secret name and wrapped value are required")
	}
	b := w.tx.Bucket(bSecrets)
	var existing Secret
	if getJSON(b, []byte(p.Secret.Name), &existing) && !p.Replace {
		return &existing, nil
	}
	p.Secret.CreatedAt = w.now()
	putJSON(b, []byte(p.Secret.Name), &p.Secret)
	return &p.Secret, nil
}

// Secret returns a wrapped secret.
func (r *Reader) Secret(name string) (*Secret, bool) {
	var s Secret
	if !getJSON(r.tx.Bucket(bSecrets), []byte(name), &s) {
		return nil, false
	}
	return &s, true
}
