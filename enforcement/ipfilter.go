package enforcement

import (
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// IPAction is what an IP rule, or the filter's default, does.
type IPAction uint8

const (
	// IPAllow admits matching addresses (an allowlist entry).
	IPAllow IPAction = iota + 1
	// IPBlock denies matching addresses (a blocklist entry).
	IPBlock
)

func (a IPAction) String() string {
	switch a {
	case IPAllow:
		return "allow"
	case IPBlock:
		return "block"
	}
	return fmt.Sprintf("IPAction(%d)", uint8(a))
}

// ParseIPAction maps "allow" and "block" (the API's spelling) to an IPAction.
func ParseIPAction(s string) (IPAction, error) {
	switch strings.ToLower(s) {
	case "allow":
		return IPAllow, nil
	case "block", "deny":
		return IPBlock, nil
	}
	return 0, fmt.Errorf("unknown IP rule action %q (want allow or block)", s)
}

// IPRule is one entry of the filter. Tenant "" means a global rule.
type IPRule struct {
	ID     string
	Tenant string
	Prefix netip.Prefix
	Action IPAction
}

// IPReason says which step of the evaluation decided.
type IPReason uint8

const (
	// IPReasonDefault: no rule and no allowlist applied; the default action decided.
	IPReasonDefault IPReason = iota
	// IPReasonGlobalBlock: the address is in the global blocklist.
	IPReasonGlobalBlock
	// IPReasonTenantBlock: the address is in the tenant's blocklist.
	IPReasonTenantBlock
	// IPReasonTenantAllow: the address is in the tenant's allowlist.
	IPReasonTenantAllow
	// IPReasonNotInTenantAllowlist: the tenant has an allowlist and the address is not in it.
	IPReasonNotInTenantAllowlist
	// IPReasonGlobalAllow: the address is in the global allowlist.
	IPReasonGlobalAllow
	// IPReasonNotInGlobalAllowlist: a global allowlist exists and the address is not in it.
	IPReasonNotInGlobalAllowlist
	// IPReasonInvalidAddress: the client address is unknown while rules apply (fail closed).
	IPReasonInvalidAddress
)

var ipReasonNames = [...]string{
	IPReasonDefault:              "default",
	IPReasonGlobalBlock:          "global_block",
	IPReasonTenantBlock:          "tenant_block",
	IPReasonTenantAllow:          "tenant_allow",
	IPReasonNotInTenantAllowlist: "not_in_tenant_allowlist",
	IPReasonGlobalAllow:          "global_allow",
	IPReasonNotInGlobalAllowlist: "not_in_global_allowlist",
	IPReasonInvalidAddress:       "invalid_address",
}

// String returns a stable snake_case name, suitable for audit metadata and metrics labels.
func (r IPReason) String() string {
	if int(r) < len(ipReasonNames) {
		return ipReasonNames[r]
	}
	return fmt.Sprintf("IPReason(%d)", uint8(r))
}

// IPDecision is the filter's answer. RuleID names the deciding rule (the most
// specific matching prefix; among rules with the same prefix, the smallest id)
// and is empty when no single rule decided.
type IPDecision struct {
	Allowed bool
	Reason  IPReason
	RuleID  string
}

// tenantShards splits the per-tenant rule tables (and the rule-id index) so an
// incremental change copies one small map, not one with every tenant in it.
const tenantShards = 256

// scope holds the rules of one scope (global or one tenant).
type scope struct {
	edit           uint64
	block4, allow4 *node
	block6, allow6 *node
	nBlock, nAllow int
}

func (s *scope) own(edit uint64) *scope {
	if s == nil {
		return &scope{edit: edit}
	}
	if s.edit == edit {
		return s
	}
	c := *s
	c.edit = edit
	return &c
}

// root returns a pointer to the trie root to change for (family, action).
func (s *scope) root(v4 bool, a IPAction) **node {
	switch {
	case v4 && a == IPBlock:
		return &s.block4
	case v4:
		return &s.allow4
	case a == IPBlock:
		return &s.block6
	default:
		return &s.allow6
	}
}

// get returns the trie root for (family, action); nil-safe.
func (s *scope) get(v4 bool, a IPAction) *node {
	if s == nil {
		return nil
	}
	if v4 {
		if a == IPBlock {
			return s.block4
		}
		return s.allow4
	}
	if a == IPBlock {
		return s.block6
	}
	return s.allow6
}

func (s *scope) empty() bool { return s == nil || (s.nBlock == 0 && s.nAllow == 0) }

// IPFilter decides whether a client address may reach a tenant.
//
// Evaluation, first step that applies wins (the original system's order):
//
//  1. global blocklist — a match denies (IPReasonGlobalBlock);
//  2. tenant blocklist — a match denies (IPReasonTenantBlock);
//  3. tenant allowlist — if the tenant has any allow rule: a match allows
//     (IPReasonTenantAllow), a miss denies (IPReasonNotInTenantAllowlist);
//     the global allowlist is not consulted;
//  4. global allowlist — if any global allow rule exists: a match allows
//     (IPReasonGlobalAllow), a miss denies (IPReasonNotInGlobalAllowlist);
//  5. the default action (IPReasonDefault).
//
// Consequences, with tenant "" (no tenant known yet) skipping steps 2 and 3:
//
//	global block │ tenant block │ tenant allowlist │ global allowlist │ result
//	─────────────┼──────────────┼──────────────────┼──────────────────┼──────────────────────────────
//	match        │ any          │ any              │ any              │ deny  global_block
//	no match     │ match        │ any              │ any              │ deny  tenant_block
//	no match     │ no match     │ match            │ any              │ allow tenant_allow
//	no match     │ no match     │ exists, no match │ any (even match) │ deny  not_in_tenant_allowlist
//	no match     │ no match     │ none             │ match            │ allow global_allow
//	no match     │ no match     │ none             │ exists, no match │ deny  not_in_global_allowlist
//	no match     │ no match     │ none             │ none             │ default action
//
// So a tenant's allowlist is authoritative for that tenant in both directions:
// it admits its addresses even when a global allowlist would not (a tenant may
// open its own door), and the operator's global allowlist does not widen it
// (an operator's "allow our office everywhere" does not open a door that the
// tenant closed). Only blocklists, global first, override an allowlist. An
// allowlist exists per scope, not per address family: a tenant whose allow
// rules are all IPv6 denies every IPv4 client.
//
// An invalid (unknown) address is denied with IPReasonInvalidAddress whenever
// any global or tenant rule exists, and otherwise gets the default action.
//
// An IPFilter is immutable; any number of goroutines may call Check with no
// locking. Changes go through an IPFilterBuilder, which produces a new filter
// sharing all unchanged structure with the old one; publish it with an
// atomic.Pointer.
type IPFilter struct {
	def     IPAction
	seed    maphash.Seed
	global  *scope
	tenants [tenantShards]map[string]*scope
	rules   [tenantShards]map[string]IPRule // rule id → rule
	n       int
}

// NewIPFilter returns a filter with no rules and the given default action.
func NewIPFilter(def IPAction) *IPFilter {
	return NewIPFilterBuilder(def).Build()
}

func (f *IPFilter) shard(s string) int {
	if f.seed == (maphash.Seed{}) { // the zero IPFilter
		return 0
	}
	return int(maphash.String(f.seed, s) % tenantShards)
}

// Check evaluates addr for tenant ("" for global rules only) as documented on
// IPFilter. IPv4-mapped IPv6 addresses are looked up as IPv4, zones are ignored.
//
// A nil *IPFilter (no view loaded yet) and the zero IPFilter have no rules
// and deny by default: fail closed.
func (f *IPFilter) Check(tenant string, addr netip.Addr) IPDecision {
	if f == nil {
		return IPDecision{Reason: IPReasonDefault}
	}
	var ts *scope
	if tenant != "" {
		ts = f.tenants[f.shard(tenant)][tenant]
	}
	if !addr.IsValid() {
		if !f.global.empty() || (ts != nil && !ts.empty()) {
			return IPDecision{Reason: IPReasonInvalidAddress}
		}
		return IPDecision{Allowed: f.def == IPAllow, Reason: IPReasonDefault}
	}
	k, v4 := keyOf(normAddr(addr))
	g := f.global
	if ids := lookup(g.get(v4, IPBlock), k); ids != nil {
		return IPDecision{Reason: IPReasonGlobalBlock, RuleID: ids[0]}
	}
	if ts != nil {
		if ids := lookup(ts.get(v4, IPBlock), k); ids != nil {
			return IPDecision{Reason: IPReasonTenantBlock, RuleID: ids[0]}
		}
		if ts.nAllow > 0 {
			if ids := lookup(ts.get(v4, IPAllow), k); ids != nil {
				return IPDecision{Allowed: true, Reason: IPReasonTenantAllow, RuleID: ids[0]}
			}
			return IPDecision{Reason: IPReasonNotInTenantAllowlist}
		}
	}
	if g != nil && g.nAllow > 0 {
		if ids := lookup(g.get(v4, IPAllow), k); ids != nil {
			return IPDecision{Allowed: true, Reason: IPReasonGlobalAllow, RuleID: ids[0]}
		}
		return IPDecision{Reason: IPReasonNotInGlobalAllowlist}
	}
	return IPDecision{Allowed: f.def == IPAllow, Reason: IPReasonDefault}
}

// Default returns the default action.
func (f *IPFilter) Default() IPAction { return f.def }

// Len returns the number of rules.
func (f *IPFilter) Len() int { return f.n }

// Rule returns the rule with the given id.
func (f *IPFilter) Rule(id string) (IPRule, bool) {
	r, ok := f.rules[f.shard(id)][id]
	return r, ok
}

// Rules returns every rule, sorted by id.
func (f *IPFilter) Rules() []IPRule {
	out := make([]IPRule, 0, f.n)
	for _, m := range f.rules {
		for _, r := range m {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b IPRule) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Builder starts a change set on top of f. f itself is never modified.
func (f *IPFilter) Builder() *IPFilterBuilder {
	return &IPFilterBuilder{f: *f, edit: newEdit()}
}

// With returns a new filter with rules added (or replaced, by id).
func (f *IPFilter) With(rules ...IPRule) (*IPFilter, error) {
	b := f.Builder()
	for _, r := range rules {
		if err := b.Add(r); err != nil {
			return nil, err
		}
	}
	return b.Build(), nil
}

// Without returns a new filter without the rules with the given ids (unknown
// ids are ignored).
func (f *IPFilter) Without(ids ...string) *IPFilter {
	b := f.Builder()
	for _, id := range ids {
		b.Remove(id)
	}
	return b.Build()
}

// IPFilterBuilder accumulates changes and produces immutable IPFilters. It
// copies only what a change touches: one trie path (O(prefix length) nodes),
// one scope, and one of 256 tenant and rule-index map shards; a bulk build
// mutates its own fresh nodes in place. A builder is not safe for concurrent
// use, but the filters it builds are, and Build may be called repeatedly
// (each call freezes the state so far).
type IPFilterBuilder struct {
	f          IPFilter
	edit       uint64
	ownTenants [tenantShards]bool
	ownRules   [tenantShards]bool
}

// NewIPFilterBuilder starts an empty filter with the given default action
// (IPAllow or IPBlock; anything else is treated as IPBlock, failing closed).
func NewIPFilterBuilder(def IPAction) *IPFilterBuilder {
	if def != IPAllow {
		def = IPBlock
	}
	b := &IPFilterBuilder{edit: newEdit()}
	b.f.def = def
	b.f.seed = maphash.MakeSeed()
	b.f.global = &scope{}
	return b
}

// SetDefault changes the default action.
func (b *IPFilterBuilder) SetDefault(def IPAction) {
	if def != IPAllow {
		def = IPBlock
	}
	b.f.def = def
}

// Errors returned by Add.
var (
	ErrRuleID     = errors.New("ip rule: empty id")
	ErrRuleAction = errors.New("ip rule: action must be allow or block")
)

// Add inserts r, replacing any rule with the same ID, so replaying a change
// stream is idempotent. The prefix is normalised leniently (zone dropped, host
// bits masked, IPv4-mapped ranges unmapped); use ParseCIDR to validate user
// input strictly before it becomes a rule.
func (b *IPFilterBuilder) Add(r IPRule) error {
	if r.ID == "" {
		return ErrRuleID
	}
	if r.Action != IPAllow && r.Action != IPBlock {
		return ErrRuleAction
	}
	p, err := canonicalPrefix(r.Prefix)
	if err != nil {
		return fmt.Errorf("ip rule %q: %w", r.ID, err)
	}
	r.Prefix = p
	if old, ok := b.f.rules[b.f.shard(r.ID)][r.ID]; ok {
		if old == r {
			return nil
		}
		b.Remove(r.ID)
	}
	s := b.scopeFor(r.Tenant)
	root := s.root(p.Addr().Is4(), r.Action)
	*root = insert(*root, 0, leafOf(p, []string{r.ID}), b.edit)
	if r.Action == IPAllow {
		s.nAllow++
	} else {
		s.nBlock++
	}
	b.ruleShard(r.ID)[r.ID] = r
	b.f.n++
	return nil
}

// Remove deletes the rule with the given id and reports whether it existed.
func (b *IPFilterBuilder) Remove(id string) bool {
	r, ok := b.f.rules[b.f.shard(id)][id]
	if !ok {
		return false
	}
	s := b.scopeFor(r.Tenant)
	k, _ := keyOf(r.Prefix.Addr())
	root := s.root(r.Prefix.Addr().Is4(), r.Action)
	c, removed := remove(*root, 0, k, r.Prefix.Bits(), id, b.edit)
	*root = c.n // the root never collapses into a leaf
	if !removed {
		panic("enforcement: ip rule index and trie disagree on " + id)
	}
	if r.Action == IPAllow {
		s.nAllow--
	} else {
		s.nBlock--
	}
	if r.Tenant != "" && s.empty() {
		delete(b.tenantShard(r.Tenant), r.Tenant)
	}
	delete(b.ruleShard(id), id)
	b.f.n--
	return true
}

// Len returns the number of rules so far.
func (b *IPFilterBuilder) Len() int { return b.f.n }

// Build returns an immutable filter with the changes so far. The builder stays
// usable; later changes copy instead of writing into the returned filter.
func (b *IPFilterBuilder) Build() *IPFilter {
	out := b.f // copy: the arrays of map pointers are values
	b.edit = newEdit()
	b.ownTenants = [tenantShards]bool{}
	b.ownRules = [tenantShards]bool{}
	return &out
}

// scopeFor returns the scope of tenant ("" = global) owned by this session,
// creating it when needed.
func (b *IPFilterBuilder) scopeFor(tenant string) *scope {
	if tenant == "" {
		b.f.global = b.f.global.own(b.edit)
		return b.f.global
	}
	m := b.tenantShard(tenant)
	s := m[tenant].own(b.edit)
	m[tenant] = s
	return s
}

func (b *IPFilterBuilder) tenantShard(tenant string) map[string]*scope {
	i := b.f.shard(tenant)
	if !b.ownTenants[i] {
		if b.f.tenants[i] == nil {
			b.f.tenants[i] = make(map[string]*scope)
		} else {
			b.f.tenants[i] = maps.Clone(b.f.tenants[i])
		}
		b.ownTenants[i] = true
	}
	return b.f.tenants[i]
}

func (b *IPFilterBuilder) ruleShard(id string) map[string]IPRule {
	i := b.f.shard(id)
	if !b.ownRules[i] {
		if b.f.rules[i] == nil {
			b.f.rules[i] = make(map[string]IPRule)
		} else {
			b.f.rules[i] = maps.Clone(b.f.rules[i])
		}
		b.ownRules[i] = true
	}
	return b.f.rules[i]
}
