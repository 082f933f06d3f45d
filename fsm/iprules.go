package fsm

import (
	"net/netip"
	"time"

	"github.com/allsource/guard/auth"
)

// IPAction is what an IP rule does with a matching client.
type IPAction string

const (
	IPAllow IPAction = "allow"
	IPBlock IPAction = "block"
)

// IPRule is one global (Tenant "") or tenant IP rule. Rules are stored under
// tenant \x00 id, so a tenant's rules (and the global ones) are one prefix scan.
type IPRule struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant,omitempty"`
	CIDR      string    `json:"cidr"`
	Action    IPAction  `json:"action"`
	Note      string    `json:"note,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

// AddIPRuleCmd is the payload of CmdAddIPRule.
type AddIPRuleCmd struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant,omitempty"` // "" for a global rule
	CIDR      string    `json:"cidr"`
	Action    IPAction  `json:"action"`
	Note      string    `json:"note,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Validate checks the payload. The API canonicalises the CIDR first (with the
// edge's own parser); Apply accepts only a canonical prefix (host bits clear).
func (c *AddIPRuleCmd) Validate() *Error {
	if c.Tenant != "" {
		if err := ValidTenantID(c.Tenant); err != nil {
			return errf(CodeInvalidArgument, "%v", err)
		}
	}
	if e := ValidObjectID("ip rule", c.ID); e != nil {
		return e
	}
	pfx, err := netip.ParsePrefix(c.CIDR)
	if err != nil || pfx.Masked() != pfx || pfx.Addr().Zone() != "" {
		return errf(CodeInvalidArgument, "cidr %q is not a canonical IPv4 or IPv6 prefix", c.CIDR)
	}
	if c.Action != IPAllow && c.Action != IPBlock {
		return errf(CodeInvalidArgument, "action must be allow or block")
	}
	return validName("note", c.Note, 256)
}

// RemoveIPRuleCmd is the payload of CmdRemoveIPRule.
type RemoveIPRuleCmd struct {
	Tenant string `json:"tenant,omitempty"`
	ID     string `json:"id"`
}

// maxGlobalIPRules bounds the global rules (tenants have quotas).
const maxGlobalIPRules = 100000

func applyAddIPRule(w *wtx, c *Command) (any, *Error) {
	var p AddIPRuleCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if e := p.Validate(); e != nil {
		return nil, e
	}
	var t *Tenant
	if p.Tenant == "" {
		if e := requireOperator(pr); e != nil {
			return nil, e
		}
	} else {
		var e *Error
		if t, e = authorize(w, pr, p.Tenant, auth.PermAdmin); e != nil {
			return nil, e
		}
	}
	if !p.ExpiresAt.IsZero() && !p.ExpiresAt.After(w.now()) {
		return nil, errf(CodeInvalidArgument, "expires_at must be in the future")
	}
	b := w.tx.Bucket(bIPRules)
	key := tkey(p.Tenant, p.ID)
	if b.Get(key) != nil {
		return nil, errf(CodeConflict, "ip rule id exists")
	}
	if t != nil && t.IPRules >= t.Quotas.Effective().MaxIPRules {
		return nil, errf(CodeFailedPrecondition, "tenant %q has reached its quota of %d IP rules", t.ID, t.Quotas.Effective().MaxIPRules)
	}
	if t == nil && len(w.reader().IPRules("", maxGlobalIPRules)) >= maxGlobalIPRules {
		return nil, errf(CodeFailedPrecondition, "at most %d global IP rules", maxGlobalIPRules)
	}
	rule := &IPRule{ID: p.ID, Tenant: p.Tenant, CIDR: p.CIDR, Action: p.Action, Note: p.Note, ExpiresAt: p.ExpiresAt.UTC(),
		CreatedBy: string(pr.Kind) + ":" + pr.ID, CreatedAt: w.now()}
	putJSON(b, key, rule)
	if t != nil {
		t.IPRules++
		w.saveTenantCounters(t)
	}
	w.changed(ChangeIPRule, p.Tenant, p.ID, false)
	w.audit(p.Tenant, ActionIPRuleAdded, "ip-rule/"+p.ID, OutcomeSuccess, map[string]string{"cidr": p.CIDR, "action": string(p.Action)})
	return rule, nil
}

func applyRemoveIPRule(w *wtx, c *Command) (any, *Error) {
	var p RemoveIPRuleCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	var t *Tenant
	if p.Tenant == "" {
		if e := requireOperator(pr); e != nil {
			return nil, e
		}
	} else {
		if err := ValidTenantID(p.Tenant); err != nil {
			return nil, errf(CodeInvalidArgument, "%v", err)
		}
		var e *Error
		if t, e = authorize(w, pr, p.Tenant, auth.PermAdmin); e != nil {
			return nil, e
		}
	}
	b := w.tx.Bucket(bIPRules)
	var rule IPRule
	if !getJSON(b, tkey(p.Tenant, p.ID), &rule) {
		return nil, errf(CodeNotFound, "ip rule not found")
	}
	del(b, tkey(p.Tenant, p.ID))
	if t != nil && t.IPRules > 0 {
		t.IPRules--
		w.saveTenantCounters(t)
	}
	w.changed(ChangeIPRule, p.Tenant, p.ID, true)
	w.audit(p.Tenant, ActionIPRuleRemoved, "ip-rule/"+p.ID, OutcomeSuccess, map[string]string{"cidr": rule.CIDR, "action": string(rule.Action)})
	return nil, nil
}

// IPRules lists the rules of tenant ("" for the global rules), at most limit.
func (r *Reader) IPRules(tenant string, limit int) []*IPRule {
	c := r.tx.Bucket(bIPRules).Cursor()
	prefix := tprefix(tenant)
	var out []*IPRule
	for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix) && len(out) < limit; k, v = c.Next() {
		var ru IPRule
		mustUnmarshal(k, v, &ru)
		out = append(out, &ru)
	}
	return out
}

// IPRule returns one rule.
func (r *Reader) IPRule(tenant, id string) (*IPRule, bool) {
	var ru IPRule
	if !getJSON(r.tx.Bucket(bIPRules), tkey(tenant, id), &ru) {
		return nil, false
	}
	return &ru, true
}

// ExpiredIPRules returns at most limit rules whose expiry is before t.
func (r *Reader) ExpiredIPRules(t time.Time, limit int) []*IPRule {
	var out []*IPRule
	c := r.tx.Bucket(bIPRules).Cursor()
	for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
		var ru IPRule
		mustUnmarshal(k, v, &ru)
		if !ru.ExpiresAt.IsZero() && ru.ExpiresAt.Before(t) {
			out = append(out, &ru)
		}
	}
	return out
}
