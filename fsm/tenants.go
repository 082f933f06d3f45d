package fsm

import (
	"time"

	"github.com/allsource/guard/auth"
	bolt "go.etcd.io/bbolt"
)

// TenantStatus is active or suspended.
type TenantStatus string

const (
	TenantActive    TenantStatus = "active"
	TenantSuspended TenantStatus = "suspended"
)

// Quotas bound what a tenant may hold. Zero means the cluster default.
type Quotas struct {
	MaxUsers   int `json:"max_users,omitempty"`
	MaxAPIKeys int `json:"max_api_keys,omitempty"`
	MaxIPRules int `json:"max_ip_rules,omitempty"`
}

// Default quotas, applied when a tenant's own are zero.
var defaultQuotas = Quotas{MaxUsers: 100000, MaxAPIKeys: 100000, MaxIPRules: 10000}

// Effective fills zero quotas with the defaults.
func (q Quotas) Effective() Quotas {
	if q.MaxUsers <= 0 {
		q.MaxUsers = defaultQuotas.MaxUsers
	}
	if q.MaxAPIKeys <= 0 {
		q.MaxAPIKeys = defaultQuotas.MaxAPIKeys
	}
	if q.MaxIPRules <= 0 {
		q.MaxIPRules = defaultQuotas.MaxIPRules
	}
	return q
}

// Tenant is one isolated customer of the protected services.
type Tenant struct {
	ID        string       `json:"id"`
	Name      string       `json:"name"`
	Tier      string       `json:"tier"`
	Status    TenantStatus `json:"status"`
	Quotas    Quotas       `json:"quotas"`
	CreatedAt time.Time    `json:"created_at"`
	UpdatedAt time.Time    `json:"updated_at"`
	// Counters kept by Apply for quota checks.
	Users   int `json:"users"`
	APIKeys int `json:"api_keys"`
	IPRules int `json:"ip_rules"`
}

// CreateTenantCmd is the payload of CmdCreateTenant.
type CreateTenantCmd struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Tier   string `json:"tier"`
	Quotas Quotas `json:"quotas"`
}

// UpdateTenantCmd is the payload of CmdUpdateTenant; nil fields stay as they are.
type UpdateTenantCmd struct {
	ID     string  `json:"id"`
	Name   *string `json:"name,omitempty"`
	Tier   *string `json:"tier,omitempty"`
	Quotas *Quotas `json:"quotas,omitempty"`
}

// SetTenantStatusCmd is the payload of CmdSetTenantStatus.
type SetTenantStatusCmd struct {
	ID     string       `json:"id"`
	Status TenantStatus `json:"status"`
}

// DeleteTenantCmd is the payload of CmdDeleteTenant.
type DeleteTenantCmd struct {
	ID string `json:"id"`
}

// Validate checks a create request; the API calls it before proposing and
// Apply calls it again.
func (c *CreateTenantCmd) Validate() *Error {
	if err := ValidTenantID(c.ID); err != nil {
		return errf(CodeInvalidArgument, "%v", err)
	}
	if c.Name == "" {
		c.Name = c.ID
	}
	if e := validName("name", c.Name, 256); e != nil {
		return e
	}
	if c.Tier == "" {
		c.Tier = "free"
	}
	if _, ok := Tiers[c.Tier]; !ok {
		return errf(CodeInvalidArgument, "unknown tier %q (want free, professional, unlimited or dev)", c.Tier)
	}
	return validQuotas(c.Quotas)
}

func validQuotas(q Quotas) *Error {
	if q.MaxUsers < 0 || q.MaxAPIKeys < 0 || q.MaxIPRules < 0 {
		return errf(CodeInvalidArgument, "quotas must not be negative")
	}
	return nil
}

func applyCreateTenant(w *wtx, c *Command) (any, *Error) {
	var p CreateTenantCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if e := requireOperator(pr); e != nil {
		return nil, e
	}
	if e := p.Validate(); e != nil {
		return nil, e
	}
	b := w.tx.Bucket(bTenants)
	if b.Get([]byte(p.ID)) != nil {
		return nil, errf(CodeConflict, "tenant %q already exists", p.ID)
	}
	t := &Tenant{ID: p.ID, Name: p.Name, Tier: p.Tier, Status: TenantActive, Quotas: p.Quotas,
		CreatedAt: w.now(), UpdatedAt: w.now()}
	putJSON(b, []byte(p.ID), t)
	lim := Tiers[p.Tier]
	lim.Tenant, lim.Tier, lim.UpdatedAt = p.ID, p.Tier, w.now()
	putJSON(w.tx.Bucket(bLimits), []byte(p.ID), &lim)
	w.changed(ChangeTenant, p.ID, p.ID, false)
	w.changed(ChangeLimit, p.ID, p.ID, false)
	w.audit(p.ID, ActionTenantCreated, "tenant/"+p.ID, OutcomeSuccess, map[string]string{"tier": p.Tier})
	return t, nil
}

func applyUpdateTenant(w *wtx, c *Command) (any, *Error) {
	var p UpdateTenantCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	// A tenant admin may rename its own tenant; tier and quotas are the operator's.
	if p.Tier != nil || p.Quotas != nil {
		if e := requireOperator(pr); e != nil {
			return nil, e
		}
	} else if e := requireTenant(pr, p.ID, auth.PermManageTenants); e != nil {
		return nil, e
	}
	t, e := activeTenant(w, pr, p.ID)
	if e != nil {
		return nil, e
	}
	meta := map[string]string{}
	if p.Name != nil {
		if e := validName("name", *p.Name, 256); e != nil || *p.Name == "" {
			if e == nil {
				e = errf(CodeInvalidArgument, "name must not be empty")
			}
			return nil, e
		}
		t.Name = *p.Name
		meta["name"] = *p.Name
	}
	if p.Quotas != nil {
		if e := validQuotas(*p.Quotas); e != nil {
			return nil, e
		}
		t.Quotas = *p.Quotas
		meta["quotas"] = "changed"
	}
	tierChanged := false
	if p.Tier != nil && *p.Tier != t.Tier {
		if _, ok := Tiers[*p.Tier]; !ok {
			return nil, errf(CodeInvalidArgument, "unknown tier %q", *p.Tier)
		}
		t.Tier, tierChanged = *p.Tier, true
		meta["tier"] = *p.Tier
	}
	t.UpdatedAt = w.now()
	putJSON(w.tx.Bucket(bTenants), []byte(t.ID), t)
	w.changed(ChangeTenant, t.ID, t.ID, false)
	if tierChanged {
		lim := Tiers[t.Tier]
		lim.Tenant, lim.Tier, lim.UpdatedAt = t.ID, t.Tier, w.now()
		putJSON(w.tx.Bucket(bLimits), []byte(t.ID), &lim)
		w.changed(ChangeLimit, t.ID, t.ID, false)
	}
	w.audit(t.ID, ActionTenantUpdated, "tenant/"+t.ID, OutcomeSuccess, meta)
	return t, nil
}

func applySetTenantStatus(w *wtx, c *Command) (any, *Error) {
	var p SetTenantStatusCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if p.Status != TenantActive && p.Status != TenantSuspended {
		return nil, errf(CodeInvalidArgument, "status must be active or suspended")
	}
	t, ok := w.reader().Tenant(p.ID)
	if !ok {
		return nil, errf(CodeNotFound, "tenant %q not found", p.ID)
	}
	t.Status, t.UpdatedAt = p.Status, w.now()
	putJSON(w.tx.Bucket(bTenants), []byte(t.ID), t)
	w.changed(ChangeTenant, t.ID, t.ID, false)
	action := ActionTenantSuspended
	if p.Status == TenantActive {
		action = ActionTenantActivated
	}
	w.audit(t.ID, action, "tenant/"+t.ID, OutcomeSuccess, nil)
	return t, nil
}

// applyDeleteTenant removes a tenant and every record scoped to it except its
// audit chain, which outlives the tenant (an operator can still read it).
func applyDeleteTenant(w *wtx, c *Command) (any, *Error) {
	var p DeleteTenantCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	b := w.tx.Bucket(bTenants)
	if b.Get([]byte(p.ID)) == nil {
		return nil, errf(CodeNotFound, "tenant %q not found", p.ID)
	}
	del(b, []byte(p.ID))
	del(w.tx.Bucket(bLimits), []byte(p.ID))
	for _, bn := range [][]byte{bUsers, bUserNames} {
		deletePrefix(w.tx.Bucket(bn), tprefix(p.ID))
	}
	for _, bn := range [][]byte{bAPIKeys, bIPRules} {
		deleteWhere(w.tx.Bucket(bn), func(v []byte) bool { return recordTenant(v) == p.ID })
	}
	releaseTenantKMSKeys(w, p.ID)
	w.changed(ChangeTenant, p.ID, p.ID, true)
	w.audit(p.ID, ActionTenantDeleted, "tenant/"+p.ID, OutcomeSuccess, nil)
	return nil, nil
}

func deletePrefix(b *bolt.Bucket, prefix []byte) {
	c := b.Cursor()
	var keys [][]byte
	for k, _ := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		del(b, k)
	}
}

func deleteWhere(b *bolt.Bucket, match func(v []byte) bool) {
	var keys [][]byte
	_ = b.ForEach(func(k, v []byte) error {
		if match(v) {
			keys = append(keys, append([]byte(nil), k...))
		}
		return nil
	})
	for _, k := range keys {
		del(b, k)
	}
}

func hasPrefix(b, p []byte) bool { return len(b) >= len(p) && string(b[:len(p)]) == string(p) }

// Tenant returns tenant id.
func (r *Reader) Tenant(id string) (*Tenant, bool) {
	var t Tenant
	if !getJSON(r.tx.Bucket(bTenants), []byte(id), &t) {
		return nil, false
	}
	return &t, true
}

// Tenants lists tenants in id order after the cursor (exclusive), at most limit.
// It returns the cursor for the next page, or "" at the end.
func (r *Reader) Tenants(after string, limit int) ([]*Tenant, string) {
	if limit <= 0 {
		limit = 100
	}
	c := r.tx.Bucket(bTenants).Cursor()
	var out []*Tenant
	k, v := c.First()
	if after != "" {
		k, v = c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
	}
	for ; k != nil; k, v = c.Next() {
		if len(out) == limit {
			return out, out[len(out)-1].ID
		}
		var t Tenant
		mustUnmarshal(k, v, &t)
		out = append(out, &t)
	}
	return out, ""
}
