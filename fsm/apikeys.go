package fsm

import (
	"time"

	"github.com/allsource/guard/auth"
)

// APIKey is a tenant's machine credential, ask_<id>_<secret>. Only the keyed
// hash (HMAC-SHA-256 with the server pepper) of the secret is stored; the raw
// key is shown once at creation. Key ids are globally unique, so an edge finds
// the record in O(1) from the presented key.
type APIKey struct {
	ID        string       `json:"id"`
	Tenant    string       `json:"tenant"`
	Name      string       `json:"name"`
	Role      auth.Role    `json:"role"`
	Hash      auth.KeyHash `json:"hash"`
	ExpiresAt time.Time    `json:"expires_at,omitzero"`
	RevokedAt time.Time    `json:"revoked_at,omitzero"`
	// LastUsed is coarse: servers aggregate uses and report them in batches.
	LastUsed  time.Time `json:"last_used,omitzero"`
	Uses      uint64    `json:"uses,omitempty"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

func (k *APIKey) expired(now time.Time) bool {
	return !k.ExpiresAt.IsZero() && !now.Before(k.ExpiresAt)
}

// Usable reports whether the key authenticates at time now.
func (k *APIKey) Usable(now time.Time) bool { return k.RevokedAt.IsZero() && !k.expired(now) }

// CreateAPIKeyCmd is the payload of CmdCreateAPIKey.
type CreateAPIKeyCmd struct {
	ID        string       `json:"id"`
	Tenant    string       `json:"tenant"`
	Name      string       `json:"name"`
	Role      auth.Role    `json:"role"`
	Hash      auth.KeyHash `json:"hash"`
	ExpiresAt time.Time    `json:"expires_at,omitzero"`
}

// Validate checks the payload's form.
func (c *CreateAPIKeyCmd) Validate() *Error {
	if err := ValidTenantID(c.Tenant); err != nil {
		return errf(CodeInvalidArgument, "%v", err)
	}
	if e := ValidObjectID("api key", c.ID); e != nil {
		return e
	}
	if e := validName("name", c.Name, 128); e != nil {
		return e
	}
	if !c.Role.Valid() {
		return errf(CodeInvalidArgument, "unknown role %q (want admin, developer, readonly or serviceaccount)", c.Role)
	}
	if c.Hash.IsZero() {
		return errf(CodeInvalidArgument, "key hash is required")
	}
	return nil
}

// RevokeAPIKeyCmd is the payload of CmdRevokeAPIKey.
type RevokeAPIKeyCmd struct {
	Tenant string `json:"tenant"`
	ID     string `json:"id"`
}

// KeyUse is the aggregated use of one key since the last report.
type KeyUse struct {
	ID       string    `json:"id"`
	LastUsed time.Time `json:"last_used"`
	Count    uint64    `json:"count"`
}

// TouchAPIKeysCmd reports key uses aggregated by a server over a few seconds:
// one raft entry for many requests, not one per request.
type TouchAPIKeysCmd struct {
	Uses []KeyUse `json:"uses"`
}

func applyCreateAPIKey(w *wtx, c *Command) (any, *Error) {
	var p CreateAPIKeyCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if e := p.Validate(); e != nil {
		return nil, e
	}
	t, e := authorize(w, pr, p.Tenant, auth.PermWrite)
	if e != nil {
		return nil, e
	}
	if e := mayGrant(pr, p.Role); e != nil {
		return nil, e
	}
	if !p.ExpiresAt.IsZero() && !p.ExpiresAt.After(w.now()) {
		return nil, errf(CodeInvalidArgument, "expires_at must be in the future")
	}
	b := w.tx.Bucket(bAPIKeys)
	if b.Get([]byte(p.ID)) != nil {
		return nil, errf(CodeConflict, "api key id exists")
	}
	if t.APIKeys >= t.Quotas.Effective().MaxAPIKeys {
		return nil, errf(CodeFailedPrecondition, "tenant %q has reached its quota of %d API keys", t.ID, t.Quotas.Effective().MaxAPIKeys)
	}
	now := w.now()
	k := &APIKey{ID: p.ID, Tenant: p.Tenant, Name: p.Name, Role: p.Role, Hash: p.Hash, ExpiresAt: p.ExpiresAt.UTC(),
		CreatedBy: string(pr.Kind) + ":" + pr.ID, CreatedAt: now}
	putJSON(b, []byte(p.ID), k)
	t.APIKeys++
	w.saveTenantCounters(t)
	w.changed(ChangeAPIKey, p.Tenant, p.ID, false)
	meta := map[string]string{"name": p.Name, "role": string(p.Role)}
	if !k.ExpiresAt.IsZero() {
		meta["expires_at"] = k.ExpiresAt.Format(time.RFC3339)
	}
	w.audit(p.Tenant, ActionAPIKeyCreated, "api-key/"+p.ID, OutcomeSuccess, meta)
	return k, nil
}

func applyRevokeAPIKey(w *wtx, c *Command) (any, *Error) {
	var p RevokeAPIKeyCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if err := ValidTenantID(p.Tenant); err != nil {
		return nil, errf(CodeInvalidArgument, "%v", err)
	}
	t, e := authorize(w, pr, p.Tenant, auth.PermWrite)
	if e != nil {
		return nil, e
	}
	k, ok := w.reader().APIKey(p.ID)
	if !ok || k.Tenant != p.Tenant {
		return nil, errf(CodeNotFound, "api key not found")
	}
	if !k.RevokedAt.IsZero() {
		return nil, errf(CodeFailedPrecondition, "api key is already revoked")
	}
	// An admin revokes any key of the tenant; others only keys of a role they
	// could have created.
	if !pr.IsOperator() && pr.Kind != PrincipalDev && !pr.Role.Has(auth.PermAdmin) {
		if e := mayGrant(pr, k.Role); e != nil {
			return nil, e
		}
	}
	k.RevokedAt = w.now()
	putJSON(w.tx.Bucket(bAPIKeys), []byte(k.ID), k)
	if t.APIKeys > 0 {
		t.APIKeys--
		w.saveTenantCounters(t)
	}
	w.changed(ChangeAPIKey, k.Tenant, k.ID, false)
	w.audit(k.Tenant, ActionAPIKeyRevoked, "api-key/"+k.ID, OutcomeSuccess, map[string]string{"name": k.Name})
	return k, nil
}

func applyTouchAPIKeys(w *wtx, c *Command) (any, *Error) {
	var p TouchAPIKeysCmd
	mustDecodePayload(c, &p)
	if c.Header.Principal.Kind != PrincipalSystem {
		return nil, errf(CodeForbidden, "only servers report API key use")
	}
	if len(p.Uses) == 0 || len(p.Uses) > maxAuditBatch {
		return nil, errf(CodeInvalidArgument, "a report holds 1 to %d key uses", maxAuditBatch)
	}
	for _, u := range p.Uses {
		if e := ValidObjectID("api key", u.ID); e != nil {
			return nil, e
		}
		if u.Count == 0 || u.LastUsed.IsZero() {
			return nil, errf(CodeInvalidArgument, "a key use needs a count and a time")
		}
	}
	b := w.tx.Bucket(bAPIKeys)
	n := 0
	for _, u := range p.Uses {
		k, ok := w.reader().APIKey(u.ID)
		if !ok {
			continue // deleted with its tenant meanwhile
		}
		if u.LastUsed.After(k.LastUsed) {
			k.LastUsed = u.LastUsed.UTC()
		}
		k.Uses += u.Count
		putJSON(b, []byte(k.ID), k)
		w.appendAudit(AuditInput{Tenant: k.Tenant, Time: w.now(), Action: ActionAPIKeyUsed,
			Actor:    Actor{Kind: PrincipalAPIKey, ID: k.ID, Name: k.Name, Role: string(k.Role)},
			Resource: "api-key/" + k.ID, Outcome: OutcomeSuccess,
			Metadata: map[string]string{"count": itoa(int(min(u.Count, 1<<62))), "last_used": k.LastUsed.Format(time.RFC3339)}})
		n++
	}
	return n, nil
}

// APIKey returns a key by id.
func (r *Reader) APIKey(id string) (*APIKey, bool) {
	var k APIKey
	if !getJSON(r.tx.Bucket(bAPIKeys), []byte(id), &k) {
		return nil, false
	}
	return &k, true
}

// APIKeys lists a tenant's keys in id order after the cursor, at most limit.
func (r *Reader) APIKeys(tenant, after string, limit int) ([]*APIKey, string) {
	c := r.tx.Bucket(bAPIKeys).Cursor()
	var out []*APIKey
	k, v := c.First()
	if after != "" {
		k, v = c.Seek([]byte(after + "\x00"))
	}
	for ; k != nil; k, v = c.Next() {
		if recordTenant(v) != tenant {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID
		}
		var key APIKey
		mustUnmarshal(k, v, &key)
		out = append(out, &key)
	}
	return out, ""
}
