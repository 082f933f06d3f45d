package enforcement

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func mustFilter(t testing.TB, def IPAction, rules ...IPRule) *IPFilter {
	t.Helper()
	f, err := NewIPFilter(def).With(rules...)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func rule(id, tenant, cidr string, a IPAction) IPRule {
	return IPRule{ID: id, Tenant: tenant, Prefix: netip.MustParsePrefix(cidr), Action: a}
}

var (
	addrIn    = netip.MustParseAddr("198.51.100.7")  // in every list below
	addrOut   = netip.MustParseAddr("192.0.2.200")   // in none
	addrGlobA = netip.MustParseAddr("203.0.113.9")   // only in the global allowlist
	addrTenA  = netip.MustParseAddr("198.51.100.77") // only in the tenant allowlist
)

// TestIPFilterDecisionTable walks every row of the table in IPFilter's doc.
func TestIPFilterDecisionTable(t *testing.T) {
	gBlock := rule("g-block", "", "198.51.100.7/32", IPBlock)
	tBlock := rule("t-block", "acme", "198.51.100.0/28", IPBlock)
	tAllow := rule("t-allow", "acme", "198.51.100.0/24", IPAllow)
	gAllow := rule("g-allow", "", "198.51.100.0/24", IPAllow)
	gAllow2 := rule("g-allow-2", "", "203.0.113.0/24", IPAllow)

	type tc struct {
		name   string
		def    IPAction
		rules  []IPRule
		tenant string
		addr   netip.Addr
		want   IPDecision
	}
	cases := []tc{
		{"global block beats everything", IPAllow, []IPRule{gBlock, tBlock, tAllow, gAllow}, "acme", addrIn,
			IPDecision{Reason: IPReasonGlobalBlock, RuleID: "g-block"}},
		{"tenant block beats allowlists", IPAllow, []IPRule{tBlock, tAllow, gAllow}, "acme", addrIn,
			IPDecision{Reason: IPReasonTenantBlock, RuleID: "t-block"}},
		{"tenant allow", IPBlock, []IPRule{tAllow}, "acme", addrIn,
			IPDecision{Allowed: true, Reason: IPReasonTenantAllow, RuleID: "t-allow"}},
		{"tenant allow admits outside the global allowlist", IPBlock, []IPRule{tAllow, gAllow2}, "acme", addrTenA,
			IPDecision{Allowed: true, Reason: IPReasonTenantAllow, RuleID: "t-allow"}},
		{"tenant allowlist miss denies even if global allowlist matches", IPAllow, []IPRule{tAllow, gAllow2}, "acme", addrGlobA,
			IPDecision{Reason: IPReasonNotInTenantAllowlist}},
		{"tenant allowlist miss denies with default allow", IPAllow, []IPRule{tAllow}, "acme", addrOut,
			IPDecision{Reason: IPReasonNotInTenantAllowlist}},
		{"global allow", IPBlock, []IPRule{gAllow}, "acme", addrIn,
			IPDecision{Allowed: true, Reason: IPReasonGlobalAllow, RuleID: "g-allow"}},
		{"global allowlist miss denies with default allow", IPAllow, []IPRule{gAllow}, "acme", addrOut,
			IPDecision{Reason: IPReasonNotInGlobalAllowlist}},
		{"default allow", IPAllow, nil, "acme", addrOut,
			IPDecision{Allowed: true, Reason: IPReasonDefault}},
		{"default deny", IPBlock, nil, "acme", addrOut,
			IPDecision{Reason: IPReasonDefault}},
		{"block rules that do not match leave the default", IPBlock, []IPRule{gBlock, tBlock}, "acme", addrOut,
			IPDecision{Reason: IPReasonDefault}},
		{"another tenant's rules do not apply", IPAllow, []IPRule{tBlock, tAllow}, "other", addrOut,
			IPDecision{Allowed: true, Reason: IPReasonDefault}},
		{"another tenant's allowlist does not apply", IPAllow, []IPRule{tAllow}, "other", addrOut,
			IPDecision{Allowed: true, Reason: IPReasonDefault}},
		{"no tenant: tenant rules skipped", IPAllow, []IPRule{tBlock}, "", addrIn,
			IPDecision{Allowed: true, Reason: IPReasonDefault}},
		{"no tenant: global allowlist applies", IPAllow, []IPRule{tAllow, gAllow2}, "", addrGlobA,
			IPDecision{Allowed: true, Reason: IPReasonGlobalAllow, RuleID: "g-allow-2"}},
		{"v6 allowlist makes the tenant deny v4", IPAllow, []IPRule{rule("v6", "acme", "2001:db8::/32", IPAllow)}, "acme", addrIn,
			IPDecision{Reason: IPReasonNotInTenantAllowlist}},
		{"v6 allowlist match", IPBlock, []IPRule{rule("v6", "acme", "2001:db8::/32", IPAllow)}, "acme", netip.MustParseAddr("2001:db8:1::5"),
			IPDecision{Allowed: true, Reason: IPReasonTenantAllow, RuleID: "v6"}},
		{"mapped client matches v4 rule", IPAllow, []IPRule{gBlock}, "", netip.MustParseAddr("::ffff:198.51.100.7"),
			IPDecision{Reason: IPReasonGlobalBlock, RuleID: "g-block"}},
		{"mapped rule matches v4 client", IPAllow, []IPRule{rule("m", "", "::ffff:198.51.100.0/120", IPBlock)}, "", addrIn,
			IPDecision{Reason: IPReasonGlobalBlock, RuleID: "m"}},
		{"v6 ::/0 does not cover v4 clients", IPAllow, []IPRule{rule("all6", "", "::/0", IPBlock)}, "", addrIn,
			IPDecision{Allowed: true, Reason: IPReasonDefault}},
		{"0.0.0.0/0 does not cover v6 clients", IPAllow, []IPRule{rule("all4", "", "0.0.0.0/0", IPBlock)}, "", netip.MustParseAddr("2001:db8::1"),
			IPDecision{Allowed: true, Reason: IPReasonDefault}},
		{"zone ignored", IPAllow, []IPRule{rule("ll", "", "fe80::/10", IPBlock)}, "", netip.MustParseAddr("fe80::1%eth0"),
			IPDecision{Reason: IPReasonGlobalBlock, RuleID: "ll"}},
		{"invalid address with rules fails closed", IPAllow, []IPRule{tBlock}, "acme", netip.Addr{},
			IPDecision{Reason: IPReasonInvalidAddress}},
		{"invalid address with only global rules fails closed", IPAllow, []IPRule{gBlock}, "acme", netip.Addr{},
			IPDecision{Reason: IPReasonInvalidAddress}},
		{"invalid address without applicable rules gets default", IPAllow, []IPRule{tBlock}, "other", netip.Addr{},
			IPDecision{Allowed: true, Reason: IPReasonDefault}},
		{"most specific matching rule is reported", IPAllow, []IPRule{
			rule("wide", "", "198.51.0.0/16", IPBlock), rule("narrow", "", "198.51.100.0/24", IPBlock), rule("other", "", "198.51.101.0/24", IPBlock)},
			"", addrIn, IPDecision{Reason: IPReasonGlobalBlock, RuleID: "narrow"}},
		{"same prefix: smallest id reported", IPAllow, []IPRule{
			rule("b", "", "198.51.100.0/24", IPBlock), rule("a", "", "198.51.100.0/24", IPBlock)},
			"", addrIn, IPDecision{Reason: IPReasonGlobalBlock, RuleID: "a"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := mustFilter(t, c.def, c.rules...)
			if got := f.Check(c.tenant, c.addr); got != c.want {
				t.Fatalf("Check(%q, %s) = %+v, want %+v", c.tenant, c.addr, got, c.want)
			}
			if got := refCheck(c.rules, c.def, c.tenant, c.addr); got != c.want {
				t.Fatalf("reference disagrees with the table: %+v", got)
			}
		})
	}
}

func TestIPFilterAddReplaceRemove(t *testing.T) {
	f := mustFilter(t, IPAllow, rule("r1", "acme", "198.51.100.0/24", IPBlock))
	if d := f.Check("acme", addrIn); d.Allowed {
		t.Fatalf("blocked: %+v", d)
	}
	// Replacing r1 by id moves it to another tenant and action.
	g, err := f.With(rule("r1", "other", "198.51.100.0/24", IPAllow))
	if err != nil {
		t.Fatal(err)
	}
	if g.Len() != 1 {
		t.Fatalf("Len = %d after replace, want 1", g.Len())
	}
	if d := g.Check("acme", addrIn); !d.Allowed || d.Reason != IPReasonDefault {
		t.Fatalf("acme after replace: %+v", d)
	}
	if d := g.Check("other", addrOut); d.Reason != IPReasonNotInTenantAllowlist {
		t.Fatalf("other after replace: %+v", d)
	}
	// The old filter is untouched.
	if d := f.Check("acme", addrIn); d.Allowed || d.RuleID != "r1" {
		t.Fatalf("old filter changed: %+v", d)
	}
	if r, ok := f.Rule("r1"); !ok || r.Tenant != "acme" {
		t.Fatalf("old filter's rule changed: %+v %v", r, ok)
	}
	// Idempotent re-add.
	h, err := g.With(rule("r1", "other", "198.51.100.0/24", IPAllow))
	if err != nil || h.Len() != 1 {
		t.Fatalf("re-add: %v, len %d", err, h.Len())
	}
	// Remove: the tenant's allowlist disappears with its last rule.
	h = h.Without("r1", "nope")
	if h.Len() != 0 || len(h.Rules()) != 0 {
		t.Fatalf("after remove: %d rules", h.Len())
	}
	if d := h.Check("other", addrOut); !d.Allowed || d.Reason != IPReasonDefault {
		t.Fatalf("other after remove: %+v", d)
	}
	if d := g.Check("other", addrOut); d.Reason != IPReasonNotInTenantAllowlist {
		t.Fatalf("removal leaked into the older filter: %+v", d)
	}
}

func TestIPFilterBuilderErrorsAndDefault(t *testing.T) {
	b := NewIPFilterBuilder(IPAllow)
	if err := b.Add(IPRule{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Action: IPBlock}); err != ErrRuleID {
		t.Errorf("empty id: %v", err)
	}
	if err := b.Add(IPRule{ID: "x", Prefix: netip.MustParsePrefix("10.0.0.0/8")}); err != ErrRuleAction {
		t.Errorf("no action: %v", err)
	}
	if err := b.Add(IPRule{ID: "x", Action: IPBlock}); err == nil {
		t.Errorf("zero prefix accepted")
	}
	if err := b.Add(IPRule{ID: "x", Prefix: netip.MustParsePrefix("10.1.2.3/8"), Action: IPBlock}); err != nil {
		t.Fatal(err)
	}
	if r := b.Build().Rules()[0]; r.Prefix.String() != "10.0.0.0/8" {
		t.Errorf("host bits not masked on load: %s", r.Prefix)
	}
	if b.Remove("missing") {
		t.Errorf("Remove of a missing id reported true")
	}
	b.SetDefault(0) // invalid → fail closed
	if f := b.Build(); f.Default() != IPBlock || f.Check("", addrOut).Allowed {
		t.Errorf("invalid default did not fail closed")
	}
	if a, err := ParseIPAction("Block"); err != nil || a != IPBlock {
		t.Errorf("ParseIPAction(Block) = %v, %v", a, err)
	}
	if _, err := ParseIPAction("maybe"); err == nil {
		t.Errorf("ParseIPAction(maybe) accepted")
	}
	if IPReasonNotInGlobalAllowlist.String() != "not_in_global_allowlist" || IPBlock.String() != "block" {
		t.Errorf("names: %s %s", IPReasonNotInGlobalAllowlist, IPBlock)
	}
}

// TestIPFilterBuilderKeepsBuiltFiltersFrozen checks the transient trick: a
// builder that keeps going after Build never writes into what it returned.
func TestIPFilterBuilderKeepsBuiltFiltersFrozen(t *testing.T) {
	b := NewIPFilterBuilder(IPAllow)
	for i := range 64 {
		if err := b.Add(rule(fmt.Sprintf("a%d", i), "", fmt.Sprintf("10.%d.0.0/16", i), IPBlock)); err != nil {
			t.Fatal(err)
		}
	}
	f1 := b.Build()
	snap := decisions(f1, "")
	for i := range 64 {
		b.Remove(fmt.Sprintf("a%d", i))
		if err := b.Add(rule(fmt.Sprintf("b%d", i), "", fmt.Sprintf("10.%d.128.0/17", i), IPAllow)); err != nil {
			t.Fatal(err)
		}
	}
	f2 := b.Build()
	if got := decisions(f1, ""); got != snap {
		t.Fatalf("built filter changed after further edits")
	}
	if d := f2.Check("", netip.MustParseAddr("10.3.200.1")); !d.Allowed || d.RuleID != "b3" {
		t.Fatalf("f2: %+v", d)
	}
	if d := f2.Check("", netip.MustParseAddr("10.3.1.1")); d.Allowed {
		t.Fatalf("f2 outside the allowlist: %+v", d)
	}
}

func decisions(f *IPFilter, tenant string) string {
	s := ""
	for i := range 256 {
		for _, j := range []int{1, 200} {
			s += fmt.Sprint(f.Check(tenant, netip.AddrFrom4([4]byte{10, byte(i), byte(j), 1})))
		}
	}
	return s
}

// refCheck is the specification written as a linear scan.
func refCheck(rules []IPRule, def IPAction, tenant string, a netip.Addr) IPDecision {
	best := func(t string, act IPAction) (id string, found bool) {
		bits := -1
		for _, r := range rules {
			p, err := canonicalPrefix(r.Prefix)
			if err != nil || r.Tenant != t || r.Action != act || !p.Contains(normAddr(a)) {
				continue
			}
			if p.Bits() > bits || (p.Bits() == bits && r.ID < id) {
				bits, id, found = p.Bits(), r.ID, true
			}
		}
		return id, found
	}
	has := func(t string, act IPAction) bool {
		for _, r := range rules {
			if r.Tenant == t && (act == 0 || r.Action == act) {
				return true
			}
		}
		return false
	}
	if !a.IsValid() {
		if has("", 0) || (tenant != "" && has(tenant, 0)) {
			return IPDecision{Reason: IPReasonInvalidAddress}
		}
		return IPDecision{Allowed: def == IPAllow, Reason: IPReasonDefault}
	}
	if id, ok := best("", IPBlock); ok {
		return IPDecision{Reason: IPReasonGlobalBlock, RuleID: id}
	}
	if tenant != "" {
		if id, ok := best(tenant, IPBlock); ok {
			return IPDecision{Reason: IPReasonTenantBlock, RuleID: id}
		}
		if has(tenant, IPAllow) {
			if id, ok := best(tenant, IPAllow); ok {
				return IPDecision{Allowed: true, Reason: IPReasonTenantAllow, RuleID: id}
			}
			return IPDecision{Reason: IPReasonNotInTenantAllowlist}
		}
	}
	if has("", IPAllow) {
		if id, ok := best("", IPAllow); ok {
			return IPDecision{Allowed: true, Reason: IPReasonGlobalAllow, RuleID: id}
		}
		return IPDecision{Reason: IPReasonNotInGlobalAllowlist}
	}
	return IPDecision{Allowed: def == IPAllow, Reason: IPReasonDefault}
}

// randRule draws rules from a small address space so that prefixes nest,
// collide and share ids often.
func randRule(r *rand.Rand, id string) IPRule {
	tenants := []string{"", "", "t1", "t2", "t3"}
	var p netip.Prefix
	if r.IntN(3) > 0 {
		a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
		p = netip.PrefixFrom(a, 8+r.IntN(25))
	} else {
		var b [16]byte
		b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
		b[4] = byte(r.IntN(4))
		b[15] = byte(r.IntN(256))
		p = netip.PrefixFrom(netip.AddrFrom16(b), 16+r.IntN(113))
	}
	if r.IntN(10) == 0 { // mapped form of a v4 prefix, loaded leniently
		a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), 0})
		p = netip.PrefixFrom(netip.AddrFrom16(a.As16()), 96+16+r.IntN(17))
	}
	act := IPBlock
	if r.IntN(2) == 0 {
		act = IPAllow
	}
	return IPRule{ID: id, Tenant: tenants[r.IntN(len(tenants))], Prefix: p, Action: act}
}

func randAddr(r *rand.Rand) netip.Addr {
	switch r.IntN(5) {
	case 0, 1:
		return netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
	case 2:
		return netip.AddrFrom16(netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))}).As16())
	default:
		var b [16]byte
		b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
		b[4] = byte(r.IntN(4))
		b[15] = byte(r.IntN(256))
		if r.IntN(2) == 0 {
			b[8] = byte(r.IntN(256))
		}
		return netip.AddrFrom16(b)
	}
}

// TestIPFilterMatchesReference compares the trie with the linear-scan
// specification through random sequences of adds, replaces and removes, and
// checks that every earlier filter keeps answering as it did when built.
func TestIPFilterMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	tenants := []string{"", "t1", "t2", "t3", "t4"}
	for round := range 30 {
		def := IPAllow
		if round%2 == 1 {
			def = IPBlock
		}
		f := NewIPFilter(def)
		live := map[string]IPRule{}
		type frozen struct {
			f     *IPFilter
			rules []IPRule
		}
		var history []frozen
		for step := range 40 {
			b := f.Builder()
			for range 1 + r.IntN(20) {
				if len(live) > 0 && r.IntN(3) == 0 {
					// remove a random live rule
					n := r.IntN(len(live))
					for id := range live {
						if n == 0 {
							if !b.Remove(id) {
								t.Fatalf("Remove(%s) = false", id)
							}
							delete(live, id)
							break
						}
						n--
					}
					continue
				}
				id := fmt.Sprintf("r%d", r.IntN(200))
				nr := randRule(r, id)
				if err := b.Add(nr); err != nil {
					t.Fatal(err)
				}
				live[id] = nr
			}
			f = b.Build()
			rules := make([]IPRule, 0, len(live))
			for _, x := range live {
				rules = append(rules, x)
			}
			if f.Len() != len(rules) {
				t.Fatalf("Len = %d, want %d", f.Len(), len(rules))
			}
			history = append(history, frozen{f, rules})
			for range 200 {
				a := randAddr(r)
				tn := tenants[r.IntN(len(tenants))]
				if got, want := f.Check(tn, a), refCheck(rules, def, tn, a); got != want {
					t.Fatalf("round %d step %d: Check(%q, %s) = %+v, want %+v", round, step, tn, a, got, want)
				}
			}
		}
		for i, h := range history {
			for range 50 {
				a := randAddr(r)
				tn := tenants[r.IntN(len(tenants))]
				if got, want := h.f.Check(tn, a), refCheck(h.rules, def, tn, a); got != want {
					t.Fatalf("round %d: filter %d changed after later edits: Check(%q, %s) = %+v, want %+v", round, i, tn, a, got, want)
				}
			}
		}
		got := f.Rules()
		for i := 1; i < len(got); i++ {
			if cmp.Compare(got[i-1].ID, got[i].ID) >= 0 {
				t.Fatalf("Rules not sorted")
			}
		}
	}
}

// TestIPFilterConcurrentReaders runs Check on published filters while a writer
// builds new ones; -race reports any write into a published filter.
func TestIPFilterConcurrentReaders(t *testing.T) {
	f := mustFilter(t, IPAllow, rule("g", "", "10.0.0.0/8", IPBlock))
	ch := make(chan *IPFilter, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cur := f
		for fl := range ch {
			cur = fl
			for i := range 256 {
				cur.Check("t1", netip.AddrFrom4([4]byte{10, byte(i), 0, 1}))
			}
		}
		_ = cur
	}()
	b := f.Builder()
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 200 {
		if err := b.Add(randRule(r, fmt.Sprintf("x%d", i%50))); err != nil {
			t.Fatal(err)
		}
		ch <- b.Build()
	}
	close(ch)
	<-done
}

func TestIPFilterZeroAndNil(t *testing.T) {
	var nilF *IPFilter
	if d := nilF.Check("acme", addrIn); d.Allowed || d.Reason != IPReasonDefault {
		t.Fatalf("nil filter: %+v", d)
	}
	var zero IPFilter
	if d := zero.Check("acme", addrIn); d.Allowed || d.Reason != IPReasonDefault {
		t.Fatalf("zero filter: %+v", d)
	}
	f, err := zero.With(rule("r", "acme", "198.51.100.0/24", IPAllow))
	if err != nil {
		t.Fatal(err)
	}
	if d := f.Check("acme", addrIn); !d.Allowed || d.RuleID != "r" {
		t.Fatalf("filter built from the zero filter: %+v", d)
	}
	if d := f.Check("acme", addrOut); d.Reason != IPReasonNotInTenantAllowlist {
		t.Fatalf("filter built from the zero filter: %+v", d)
	}
}
