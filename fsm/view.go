package fsm

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/allsource/guard/auth"
)

// The enforcement view (DESIGN.md §5) is the part of the state an edge needs
// to decide requests on its own: tenants and their status, rate-limit
// policies, IP rules, API-key hashes, user status and role, public signing
// keys and revocations — never password hashes, e-mail addresses, MFA
// secrets, KMS material or the audit log. Servers stream it to edges as a
// snapshot at one raft index followed by the changes after it; this file
// owns its record shapes (the wire format, shared by the server's watch hub
// and the edge's replica) and how a Change resolves to its current record.

// ChangeSecret is a view-only change kind: cluster secrets the edges need
// (the API-key pepper), sealed for transport by the server's watch hub. The
// state machine itself never emits it.
const ChangeSecret ChangeKind = "secret"

// SecretPepper is the name under which the API-key pepper is stored wrapped
// in the secrets bucket, and under which the view carries it.
const SecretPepper = "api_key_pepper"

// ViewTenant is a tenant as an edge sees it.
type ViewTenant struct {
	ID     string       `json:"id"`
	Status TenantStatus `json:"status"`
	Tier   string       `json:"tier,omitempty"`
}

// ViewLimit is a tenant's rate-limit policy.
type ViewLimit struct {
	Tenant            string         `json:"tenant"`
	RequestsPerMinute int            `json:"requests_per_minute"`
	Burst             int            `json:"burst"`
	RouteCosts        map[string]int `json:"route_costs,omitempty"`
}

// ViewUser is what an edge checks of a token's user on every request.
type ViewUser struct {
	ID               string    `json:"id"`
	Tenant           string    `json:"tenant"`
	Role             auth.Role `json:"role"`
	Disabled         bool      `json:"disabled,omitempty"`
	TokensValidAfter time.Time `json:"tokens_valid_after,omitzero"`
}

// ViewAPIKey is an API key's keyed hash and status.
type ViewAPIKey struct {
	ID        string       `json:"id"`
	Tenant    string       `json:"tenant"`
	Name      string       `json:"name,omitempty"`
	Role      auth.Role    `json:"role"`
	Hash      auth.KeyHash `json:"hash"`
	ExpiresAt time.Time    `json:"expires_at,omitzero"`
	RevokedAt time.Time    `json:"revoked_at,omitzero"`
}

// ViewIPRule is one IP rule ("" tenant: global).
type ViewIPRule struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant,omitempty"`
	CIDR      string    `json:"cidr"`
	Action    IPAction  `json:"action"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// ViewSigningKey is the verifying half of a token-signing key. Ed25519 keys
// carry their public key; an HS256 key carries its secret only sealed for
// transport (Sealed), and only when the serving server could unwrap it.
type ViewSigningKey struct {
	KID       string        `json:"kid"`
	Alg       auth.Alg      `json:"alg"`
	PublicKey []byte        `json:"public_key,omitempty"`
	Sealed    []byte        `json:"sealed,omitempty"`
	State     auth.KeyState `json:"state"`
}

// ViewRevocation is a revoked access token (JTI) or a revoked refresh family
// (Family), whose access tokens are refused too. Both matter only until
// ExpiresAt.
type ViewRevocation struct {
	JTI       string    `json:"jti,omitempty"`
	Family    string    `json:"family,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// ViewSecret is a cluster secret sealed for transport with a key derived from
// the join token (SealViewSecret). Version identifies the secret's value
// without revealing it.
type ViewSecret struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Sealed  []byte `json:"sealed"`
}

// ViewRecord is one record of the enforcement view: what a Change resolved to
// at the index it is sent with. Deleted records carry only their identity.
// Exactly one of the typed fields is set when Deleted is false.
type ViewRecord struct {
	Kind       ChangeKind      `json:"kind"`
	Tenant     string          `json:"tenant,omitempty"`
	Key        string          `json:"key"`
	Deleted    bool            `json:"deleted,omitempty"`
	TenantRec  *ViewTenant     `json:"t,omitempty"`
	Limit      *ViewLimit      `json:"l,omitempty"`
	User       *ViewUser       `json:"u,omitempty"`
	APIKey     *ViewAPIKey     `json:"k,omitempty"`
	IPRule     *ViewIPRule     `json:"ip,omitempty"`
	SigningKey *ViewSigningKey `json:"sk,omitempty"`
	Revocation *ViewRevocation `json:"rv,omitempty"`
	Secret     *ViewSecret     `json:"s,omitempty"`
}

// InView reports whether changes of kind k belong to the enforcement view.
func InView(k ChangeKind) bool {
	switch k {
	case ChangeTenant, ChangeLimit, ChangeUser, ChangeAPIKey, ChangeIPRule, ChangeSigningKey,
		ChangeRevocation, ChangeSecret:
		return true
	}
	return false
}

const familyPrefix = "family/"

// ViewRecord resolves a change to the record's current state in this reader,
// as a view record: the record itself when it exists, a deletion otherwise.
// ok is false for changes outside the view (audit, KMS keys, the operator).
func (r *Reader) ViewRecord(c Change) (rec ViewRecord, ok bool) {
	if !InView(c.Kind) || c.Kind == ChangeSecret {
		return ViewRecord{}, false
	}
	rec = ViewRecord{Kind: c.Kind, Tenant: c.Tenant, Key: c.Key}
	switch c.Kind {
	case ChangeTenant:
		if t, found := r.Tenant(c.Key); found {
			rec.TenantRec = viewTenant(t)
		}
	case ChangeLimit:
		if l, found := r.RateLimit(c.Key); found {
			rec.Limit = viewLimit(l)
		}
	case ChangeUser:
		if u, found := r.User(c.Tenant, c.Key); found {
			rec.User = viewUser(u)
		}
	case ChangeAPIKey:
		if k, found := r.APIKey(c.Key); found {
			rec.APIKey = viewAPIKey(k)
			rec.Tenant = k.Tenant
		}
	case ChangeIPRule:
		if ru, found := r.IPRule(c.Tenant, c.Key); found {
			rec.IPRule = viewIPRule(ru)
		}
	case ChangeSigningKey:
		if k, found := r.signingKey(c.Key); found {
			rec.SigningKey = viewSigningKey(k)
		}
	case ChangeRevocation:
		if fam, isFam := strings.CutPrefix(c.Key, familyPrefix); isFam {
			if s, found := r.RefreshSession(fam); found && s.Revoked {
				rec.Revocation = &ViewRevocation{Family: fam, Tenant: s.Tenant, ExpiresAt: s.ExpiresAt}
			}
		} else if rv, found := r.revocation(c.Key); found {
			rec.Revocation = &ViewRevocation{JTI: rv.JTI, Tenant: rv.Tenant, ExpiresAt: rv.ExpiresAt}
		}
	}
	rec.Deleted = rec.TenantRec == nil && rec.Limit == nil && rec.User == nil && rec.APIKey == nil &&
		rec.IPRule == nil && rec.SigningKey == nil && rec.Revocation == nil
	return rec, true
}

// EachViewRecord calls fn for every record of the enforcement view held by
// this reader (a consistent snapshot at r.AppliedIndex()), in a fixed order:
// tenants, limits, users, API keys, IP rules, signing keys, revocations,
// revoked refresh families. Secrets are not included: the server seals them.
// It stops at, and returns, fn's first error.
func (r *Reader) EachViewRecord(fn func(ViewRecord) error) error {
	type src struct {
		bucket []byte
		rec    func(k, v []byte) (ViewRecord, bool)
	}
	srcs := []src{
		{bTenants, func(k, v []byte) (ViewRecord, bool) {
			var t Tenant
			mustUnmarshal(k, v, &t)
			return ViewRecord{Kind: ChangeTenant, Tenant: t.ID, Key: t.ID, TenantRec: viewTenant(&t)}, true
		}},
		{bLimits, func(k, v []byte) (ViewRecord, bool) {
			var l RateLimit
			mustUnmarshal(k, v, &l)
			return ViewRecord{Kind: ChangeLimit, Tenant: l.Tenant, Key: l.Tenant, Limit: viewLimit(&l)}, true
		}},
		{bUsers, func(k, v []byte) (ViewRecord, bool) {
			var u User
			mustUnmarshal(k, v, &u)
			return ViewRecord{Kind: ChangeUser, Tenant: u.Tenant, Key: u.ID, User: viewUser(&u)}, true
		}},
		{bAPIKeys, func(k, v []byte) (ViewRecord, bool) {
			var a APIKey
			mustUnmarshal(k, v, &a)
			return ViewRecord{Kind: ChangeAPIKey, Tenant: a.Tenant, Key: a.ID, APIKey: viewAPIKey(&a)}, true
		}},
		{bIPRules, func(k, v []byte) (ViewRecord, bool) {
			var ru IPRule
			mustUnmarshal(k, v, &ru)
			return ViewRecord{Kind: ChangeIPRule, Tenant: ru.Tenant, Key: ru.ID, IPRule: viewIPRule(&ru)}, true
		}},
		{bSigningKeys, func(k, v []byte) (ViewRecord, bool) {
			var s SigningKey
			mustUnmarshal(k, v, &s)
			return ViewRecord{Kind: ChangeSigningKey, Key: s.KID, SigningKey: viewSigningKey(&s)}, true
		}},
		{bRevocations, func(k, v []byte) (ViewRecord, bool) {
			var rv Revocation
			mustUnmarshal(k, v, &rv)
			return ViewRecord{Kind: ChangeRevocation, Tenant: rv.Tenant, Key: rv.JTI,
				Revocation: &ViewRevocation{JTI: rv.JTI, Tenant: rv.Tenant, ExpiresAt: rv.ExpiresAt}}, true
		}},
		{bRefresh, func(k, v []byte) (ViewRecord, bool) {
			var s RefreshSession
			mustUnmarshal(k, v, &s)
			if !s.Revoked {
				return ViewRecord{}, false
			}
			return ViewRecord{Kind: ChangeRevocation, Tenant: s.Tenant, Key: familyPrefix + s.ID,
				Revocation: &ViewRevocation{Family: s.ID, Tenant: s.Tenant, ExpiresAt: s.ExpiresAt}}, true
		}},
	}
	for _, s := range srcs {
		b := bucket(r.tx, s.bucket)
		if b == nil {
			continue
		}
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			rec, ok := s.rec(k, v)
			if !ok {
				continue
			}
			if err := fn(rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// ClusterID identifies the cluster's history: a fingerprint of the operator
// credential installed at bootstrap (random per cluster), or "" before
// bootstrap. An edge whose persisted view came from another cluster (one
// rebuilt from scratch reuses raft indexes) resynchronises in full.
func (r *Reader) ClusterID() string {
	op, ok := r.Operator()
	if !ok {
		return ""
	}
	sum := sha256.Sum256([]byte("allsource-cluster-id\x00" + op.ID + "\x00" + op.Hash + "\x00" + op.CreatedAt.UTC().Format(time.RFC3339Nano)))
	return hex.EncodeToString(sum[:8])
}

// SecretVersion fingerprints a stored (wrapped) secret: equal versions mean
// the same secret value, and the version reveals nothing about it.
func SecretVersion(s *Secret) string {
	sum := sha256.Sum256(append([]byte("allsource-secret-version\x00"+s.Name+"\x00"), s.Wrapped...))
	return hex.EncodeToString(sum[:8])
}

func (r *Reader) signingKey(kid string) (*SigningKey, bool) {
	var s SigningKey
	if !getJSON(r.tx.Bucket(bSigningKeys), []byte(kid), &s) {
		return nil, false
	}
	return &s, true
}

func (r *Reader) revocation(jti string) (*Revocation, bool) {
	var rv Revocation
	if !getJSON(r.tx.Bucket(bRevocations), []byte(jti), &rv) {
		return nil, false
	}
	return &rv, true
}

func viewTenant(t *Tenant) *ViewTenant { return &ViewTenant{ID: t.ID, Status: t.Status, Tier: t.Tier} }

func viewLimit(l *RateLimit) *ViewLimit {
	return &ViewLimit{Tenant: l.Tenant, RequestsPerMinute: l.RequestsPerMinute, Burst: l.Burst, RouteCosts: l.RouteCosts}
}

func viewUser(u *User) *ViewUser {
	return &ViewUser{ID: u.ID, Tenant: u.Tenant, Role: u.Role, Disabled: u.Disabled, TokensValidAfter: u.TokensValidAfter}
}

func viewAPIKey(k *APIKey) *ViewAPIKey {
	return &ViewAPIKey{ID: k.ID, Tenant: k.Tenant, Name: k.Name, Role: k.Role, Hash: k.Hash,
		ExpiresAt: k.ExpiresAt, RevokedAt: k.RevokedAt}
}

func viewIPRule(ru *IPRule) *ViewIPRule {
	return &ViewIPRule{ID: ru.ID, Tenant: ru.Tenant, CIDR: ru.CIDR, Action: ru.Action, ExpiresAt: ru.ExpiresAt}
}

func viewSigningKey(k *SigningKey) *ViewSigningKey {
	return &ViewSigningKey{KID: k.KID, Alg: k.Alg, PublicKey: k.PublicKey, State: k.State}
}

// ---- secrets sealed for edges ----

// ErrSealed is returned when a sealed secret does not open: another join
// token, or a damaged value.
var ErrSealed = errors.New("sealed secret does not open with this join token")

const sealVersion byte = 1

// viewSealKey derives the AES-256 key that seals view secrets from the join
// token (HKDF-SHA-256; a different label from the gossip key). Only holders
// of the join token — servers and edges — can open them.
func viewSealKey(joinToken string) ([]byte, error) {
	return hkdf.Key(sha256.New, []byte(joinToken), []byte("allsource-view-seal-salt-v1"), "allsource edge view secrets v1", 32)
}

// SealViewSecret encrypts a secret for edges with AES-256-GCM under a key
// derived from the join token, binding name as associated data. The result
// is 1 version byte, a 12-byte random nonce, and the ciphertext with its tag.
// It is what crosses the watch stream and what an edge keeps on disk: the
// secret is never written or sent in the clear.
func SealViewSecret(joinToken, name string, secret []byte) ([]byte, error) {
	key, err := viewSealKey(joinToken)
	if err != nil {
		return nil, err
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+gcm.NonceSize(), 1+gcm.NonceSize()+len(secret)+gcm.Overhead())
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return gcm.Seal(out, out[1:1+gcm.NonceSize()], secret, []byte(name)), nil
}

// OpenViewSecret reverses SealViewSecret.
func OpenViewSecret(joinToken, name string, sealed []byte) ([]byte, error) {
	key, err := viewSealKey(joinToken)
	if err != nil {
		return nil, err
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	if len(sealed) < 1+gcm.NonceSize()+gcm.Overhead() || sealed[0] != sealVersion {
		return nil, ErrSealed
	}
	pt, err := gcm.Open(nil, sealed[1:1+gcm.NonceSize()], sealed[1+gcm.NonceSize():], []byte(name))
	if err != nil {
		return nil, ErrSealed
	}
	return pt, nil
}

// ---- audit from edges ----

// EdgeAuditBatch is what an edge ships to POST /v1/internal/audit: audit
// entries (denials, authentication failures, rate-limit hits, IP blocks) and
// API-key uses aggregated per key. The leader commits the entries as one
// CmdAppendAudit and the uses as one CmdTouchAPIKeys.
type EdgeAuditBatch struct {
	Edge    string       `json:"edge"`
	Batch   string       `json:"batch"` // the edge's id for the batch (retries repeat it)
	Entries []AuditInput `json:"entries,omitempty"`
	KeyUses []KeyUse     `json:"key_uses,omitempty"`
}

// Valid returns the entries and key uses that pass validation (at most
// maxAuditBatch of each) and how many were dropped.
func (b *EdgeAuditBatch) Valid() (entries []AuditInput, uses []KeyUse, dropped int) {
	for i := range b.Entries {
		in := b.Entries[i]
		if in.Validate() != nil || in.Time.IsZero() || len(entries) == maxAuditBatch {
			dropped++
			continue
		}
		if in.Metadata == nil {
			in.Metadata = map[string]string{}
		}
		if len(in.Metadata) < 32 {
			in.Metadata["edge"] = truncateString(b.Edge, 64)
		}
		entries = append(entries, in)
	}
	for _, u := range b.KeyUses {
		if ValidObjectID("api key", u.ID) != nil || u.Count == 0 || u.LastUsed.IsZero() || len(uses) == maxAuditBatch {
			dropped++
			continue
		}
		uses = append(uses, u)
	}
	return entries, uses, dropped
}

func truncateString(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
