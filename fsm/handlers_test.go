package fsm

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
)

// lastCommandType is the highest CommandType with a name: the end of the enum.
func lastCommandType() CommandType {
	t := CmdNoop
	for !strings.HasPrefix((t + 1).String(), "command(") {
		t++
	}
	return t
}

// TestEveryCommandTypeHasHandler walks the enum from CmdNoop to its last named
// value: a type added without a handler fails here.
func TestEveryCommandTypeHasHandler(t *testing.T) {
	last := lastCommandType()
	if last < CmdSetSecret {
		t.Fatalf("last command type = %s (%d), want at least set_secret (%d)", last, last, CmdSetSecret)
	}
	for c := CmdNoop; c <= last; c++ {
		if _, ok := handlers(c); !ok {
			t.Errorf("command type %s (%d) has no handler", c, c)
		}
	}
	if _, ok := handlers(CmdInvalid); ok {
		t.Errorf("CmdInvalid has a handler; type 0 must never apply")
	}
	if _, ok := handlers(last + 1); ok {
		t.Errorf("type %d past the enum has a handler but no name", last+1)
	}
}

func TestCommandTypeNames(t *testing.T) {
	seen := map[string]CommandType{}
	for c := CmdInvalid; c <= lastCommandType(); c++ {
		n := c.String()
		if prev, dup := seen[n]; dup {
			t.Errorf("types %d and %d share the name %q", prev, c, n)
		}
		seen[n] = c
	}
	if got, want := CommandType(999).String(), "command(999)"; got != want {
		t.Errorf("CommandType(999).String() = %q, want %q", got, want)
	}
}

// step is one command of a handler test, applied in order on one FSM.
type step struct {
	name    string
	by      Principal
	payload any
	want    Code // "" for success
	check   func(t *testing.T, h *harness, res *Result)
}

func longID(n int) string { return strings.Repeat("a", n) }

// badTenantIDs are ids every command must refuse.
var badTenantIDs = []string{"", longID(65), "../x", "ACME", "ténant", "a b", "a\x00b", "a/b", "a.b", "acme\n"}

// handlerCases lists, for every command type, its successes and its main
// business errors. TestHandlers fails for a type without cases.
func handlerCases() map[CommandType][]step {
	acmeAdmin := adminOf("acme")
	cases := map[CommandType][]step{}

	cases[CmdNoop] = []step{
		{name: "operator", by: opP, check: func(t *testing.T, h *harness, res *Result) {
			if res.Value != nil {
				t.Errorf("noop value = %v, want nil", res.Value)
			}
		}},
		{name: "tenant member", by: member("acme", auth.RoleReadOnly)},
	}

	tok := func(id string, hashLen int) *BootstrapOperatorCmd {
		return &BootstrapOperatorCmd{Token: OperatorToken{ID: id, Hash: strings.Repeat("f", hashLen)}}
	}
	cases[CmdBootstrapOperator] = []step{ // on a fresh FSM
		{name: "operator principal", by: opP, payload: tok("root", 64), want: CodeForbidden},
		{name: "tenant admin", by: acmeAdmin, payload: tok("root", 64), want: CodeForbidden},
		{name: "dev principal", by: devP, payload: tok("root", 64), want: CodeForbidden},
		{name: "no id", by: sysP, payload: tok("", 64), want: CodeInvalidArgument},
		{name: "short hash", by: sysP, payload: tok("root", 31), want: CodeInvalidArgument},
		{name: "system", by: sysP, payload: tok("root", 64), check: func(t *testing.T, h *harness, res *Result) {
			var op *OperatorToken
			view(t, h.f, func(r *Reader) { op, _ = r.Operator() })
			if op == nil || op.ID != "root" || op.Hash != strings.Repeat("f", 64) {
				t.Fatalf("operator record = %+v, want id root with the proposed hash", op)
			}
			if want := time.Unix(0, h.header(sysP).Time).Add(-time.Second).UTC(); !op.CreatedAt.Equal(want) {
				t.Errorf("created_at = %v, want the proposer time %v", op.CreatedAt, want)
			}
			if es := allAudit(t, h.f, ""); len(es) != 1 || es[0].Action != ActionOperatorBootstrap {
				t.Errorf("cluster audit chain = %+v, want one operator_bootstrapped entry", es)
			}
		}},
		{name: "second bootstrap", by: sysP, payload: tok("other", 64), want: CodeConflict,
			check: func(t *testing.T, h *harness, res *Result) {
				var op *OperatorToken
				view(t, h.f, func(r *Reader) { op, _ = r.Operator() })
				if op.ID != "root" {
					t.Errorf("operator id = %q after a refused second bootstrap, want root", op.ID)
				}
			}},
	}

	create := func(id, tier string) *CreateTenantCmd { return &CreateTenantCmd{ID: id, Name: "T " + id, Tier: tier} }
	cases[CmdCreateTenant] = []step{
		{name: "operator", by: opP, payload: &CreateTenantCmd{ID: "initech", Name: "Initech", Tier: "unlimited",
			Quotas: Quotas{MaxUsers: 5}}, check: func(t *testing.T, h *harness, res *Result) {
			ten := res.Value.(*Tenant)
			stored, ok := tenantOf(t, h.f, "initech")
			if !ok {
				t.Fatal("tenant initech not stored")
			}
			want := time.Unix(0, h.header(opP).Time).Add(-time.Second).UTC()
			if stored.Name != "Initech" || stored.Tier != "unlimited" || stored.Status != TenantActive ||
				stored.Quotas.MaxUsers != 5 || !stored.CreatedAt.Equal(want) || ten.ID != "initech" {
				t.Errorf("stored tenant = %+v, want initech/Initech/unlimited/active/max_users 5 created at %v", stored, want)
			}
			lim, ok := limitOf(t, h.f, "initech")
			if !ok || lim.Tier != "unlimited" || lim.RequestsPerMinute != Tiers["unlimited"].RequestsPerMinute ||
				lim.Burst != Tiers["unlimited"].Burst || lim.Tenant != "initech" {
				t.Errorf("limit = %+v, want the unlimited tier for initech", lim)
			}
			es := allAudit(t, h.f, "initech")
			if len(es) != 1 || es[0].Action != ActionTenantCreated || es[0].Actor.Kind != PrincipalOperator ||
				es[0].Metadata["tier"] != "unlimited" || es[0].RequestID == "" || es[0].IP != "192.0.2.7" {
				t.Errorf("audit = %+v, want one tenant_created entry by the operator with tier, request id and ip", es)
			}
		}},
		{name: "system principal", by: sysP, payload: create("made-by-system", "free")},
		{name: "defaults", by: opP, payload: &CreateTenantCmd{ID: "bare"}, check: func(t *testing.T, h *harness, res *Result) {
			ten, _ := tenantOf(t, h.f, "bare")
			if ten.Name != "bare" || ten.Tier != "free" {
				t.Errorf("tenant = %+v, want name defaulting to the id and tier to free", ten)
			}
		}},
		{name: "64 character id", by: opP, payload: create(longID(64), "")},
		{name: "duplicate", by: opP, payload: create("acme", "free"), want: CodeConflict},
		{name: "unknown tier", by: opP, payload: create("t1", "gold"), want: CodeInvalidArgument},
		{name: "negative quota", by: opP, payload: &CreateTenantCmd{ID: "t1", Quotas: Quotas{MaxAPIKeys: -1}}, want: CodeInvalidArgument},
		{name: "control character in name", by: opP, payload: &CreateTenantCmd{ID: "t1", Name: "a\nb"}, want: CodeInvalidArgument},
		{name: "long name", by: opP, payload: &CreateTenantCmd{ID: "t1", Name: strings.Repeat("n", 257)}, want: CodeInvalidArgument},
		{name: "tenant admin", by: acmeAdmin, payload: create("t1", "free"), want: CodeForbidden},
		{name: "api key admin", by: Principal{Kind: PrincipalAPIKey, ID: "k1", Tenant: "acme", Role: auth.RoleAdmin},
			payload: create("t1", "free"), want: CodeForbidden},
		{name: "dev principal", by: devP, payload: create("t1", "free"), want: CodeForbidden},
	}
	for _, id := range badTenantIDs {
		cases[CmdCreateTenant] = append(cases[CmdCreateTenant], step{name: fmt.Sprintf("bad id %q", id), by: opP,
			payload: create(id, "free"), want: CodeInvalidArgument})
	}

	str := func(s string) *string { return &s }
	cases[CmdUpdateTenant] = []step{
		{name: "operator renames", by: opP, payload: &UpdateTenantCmd{ID: "acme", Name: str("Acme Corp")},
			check: func(t *testing.T, h *harness, res *Result) {
				if ten, _ := tenantOf(t, h.f, "acme"); ten.Name != "Acme Corp" {
					t.Errorf("name = %q, want Acme Corp", ten.Name)
				}
			}},
		{name: "operator changes tier", by: opP, payload: &UpdateTenantCmd{ID: "acme", Tier: str("unlimited")},
			check: func(t *testing.T, h *harness, res *Result) {
				ten, _ := tenantOf(t, h.f, "acme")
				lim, _ := limitOf(t, h.f, "acme")
				if ten.Tier != "unlimited" || lim.Tier != "unlimited" || lim.RequestsPerMinute != Tiers["unlimited"].RequestsPerMinute {
					t.Errorf("tenant tier %q, limit %+v: want both on unlimited", ten.Tier, lim)
				}
			}},
		{name: "operator sets quotas", by: opP, payload: &UpdateTenantCmd{ID: "acme", Quotas: &Quotas{MaxIPRules: 7}},
			check: func(t *testing.T, h *harness, res *Result) {
				if ten, _ := tenantOf(t, h.f, "acme"); ten.Quotas.MaxIPRules != 7 {
					t.Errorf("quotas = %+v, want max_ip_rules 7", ten.Quotas)
				}
			}},
		{name: "tenant admin renames own", by: acmeAdmin, payload: &UpdateTenantCmd{ID: "acme", Name: str("By admin")}},
		{name: "api key admin renames own", by: Principal{Kind: PrincipalAPIKey, ID: "k1", Tenant: "acme", Role: auth.RoleAdmin},
			payload: &UpdateTenantCmd{ID: "acme", Name: str("By key")}},
		{name: "tenant admin renames another", by: acmeAdmin, payload: &UpdateTenantCmd{ID: "globex", Name: str("x")}, want: CodeNotFound},
		{name: "tenant admin changes own tier", by: acmeAdmin, payload: &UpdateTenantCmd{ID: "acme", Tier: str("dev")}, want: CodeForbidden},
		{name: "tenant admin changes own quotas", by: acmeAdmin, payload: &UpdateTenantCmd{ID: "acme", Quotas: &Quotas{}}, want: CodeForbidden},
		{name: "developer renames own", by: member("acme", auth.RoleDeveloper), payload: &UpdateTenantCmd{ID: "acme", Name: str("x")}, want: CodeForbidden},
		{name: "readonly renames own", by: member("acme", auth.RoleReadOnly), payload: &UpdateTenantCmd{ID: "acme", Name: str("x")}, want: CodeForbidden},
		{name: "missing tenant", by: opP, payload: &UpdateTenantCmd{ID: "nope", Name: str("x")}, want: CodeNotFound},
		{name: "unknown tier", by: opP, payload: &UpdateTenantCmd{ID: "acme", Tier: str("gold")}, want: CodeInvalidArgument},
		{name: "empty name", by: opP, payload: &UpdateTenantCmd{ID: "acme", Name: str("")}, want: CodeInvalidArgument},
		{name: "control character in name", by: opP, payload: &UpdateTenantCmd{ID: "acme", Name: str("a\x7fb")}, want: CodeInvalidArgument},
		{name: "negative quotas", by: opP, payload: &UpdateTenantCmd{ID: "acme", Quotas: &Quotas{MaxUsers: -3}}, want: CodeInvalidArgument},
	}

	status := func(id string, st TenantStatus) *SetTenantStatusCmd { return &SetTenantStatusCmd{ID: id, Status: st} }
	wantStatus := func(id string, st TenantStatus, action Action) func(t *testing.T, h *harness, res *Result) {
		return func(t *testing.T, h *harness, res *Result) {
			if ten, _ := tenantOf(t, h.f, id); ten.Status != st {
				t.Errorf("status of %s = %q, want %q", id, ten.Status, st)
			}
			es := allAudit(t, h.f, id)
			if last := es[len(es)-1]; last.Action != action {
				t.Errorf("last audit action = %q, want %q", last.Action, action)
			}
		}
	}
	cases[CmdSetTenantStatus] = []step{
		{name: "suspend", by: opP, payload: status("globex", TenantSuspended), check: wantStatus("globex", TenantSuspended, ActionTenantSuspended)},
		{name: "suspend again", by: opP, payload: status("globex", TenantSuspended), check: wantStatus("globex", TenantSuspended, ActionTenantSuspended)},
		{name: "activate", by: opP, payload: status("globex", TenantActive), check: wantStatus("globex", TenantActive, ActionTenantActivated)},
		{name: "unknown status", by: opP, payload: status("globex", "deleted"), want: CodeInvalidArgument},
		{name: "empty status", by: opP, payload: status("globex", ""), want: CodeInvalidArgument},
		{name: "missing tenant", by: opP, payload: status("nope", TenantSuspended), want: CodeNotFound},
		{name: "tenant admin suspends own", by: acmeAdmin, payload: status("acme", TenantSuspended), want: CodeForbidden},
		{name: "tenant admin activates own", by: acmeAdmin, payload: status("acme", TenantActive), want: CodeForbidden},
	}

	cases[CmdDeleteTenant] = []step{
		{name: "tenant admin deletes own", by: acmeAdmin, payload: &DeleteTenantCmd{ID: "acme"}, want: CodeForbidden},
		{name: "tenant admin deletes another", by: acmeAdmin, payload: &DeleteTenantCmd{ID: "globex"}, want: CodeForbidden},
		{name: "operator", by: opP, payload: &DeleteTenantCmd{ID: "globex"}, check: func(t *testing.T, h *harness, res *Result) {
			if _, ok := tenantOf(t, h.f, "globex"); ok {
				t.Error("tenant globex still exists")
			}
			if _, ok := limitOf(t, h.f, "globex"); ok {
				t.Error("rate limit of globex still exists")
			}
			es := allAudit(t, h.f, "globex")
			if len(es) != 2 || es[1].Action != ActionTenantDeleted {
				t.Errorf("globex audit = %d entries, want its chain kept with a tenant_deleted entry last", len(es))
			}
			if _, ok := tenantOf(t, h.f, "acme"); !ok {
				t.Error("deleting globex removed acme")
			}
		}},
		{name: "again", by: opP, payload: &DeleteTenantCmd{ID: "globex"}, want: CodeNotFound},
		{name: "never existed", by: opP, payload: &DeleteTenantCmd{ID: "nope"}, want: CodeNotFound},
	}

	rl := func(p SetRateLimitCmd) *SetRateLimitCmd {
		if p.Tenant == "" {
			p.Tenant = "acme"
		}
		return &p
	}
	wantLimit := func(tier string, rpm, burst int) func(t *testing.T, h *harness, res *Result) {
		return func(t *testing.T, h *harness, res *Result) {
			lim, _ := limitOf(t, h.f, "acme")
			if lim.Tier != tier || lim.RequestsPerMinute != rpm || lim.Burst != burst {
				t.Errorf("limit = %+v, want tier %q rpm %d burst %d", lim, tier, rpm, burst)
			}
			es := allAudit(t, h.f, "acme")
			last := es[len(es)-1]
			if last.Action != ActionConfigChanged || last.Metadata["requests_per_minute"] != fmt.Sprint(rpm) {
				t.Errorf("last audit = %+v, want config_changed with the new figures", last)
			}
		}
	}
	cases[CmdSetRateLimit] = []step{
		{name: "tier", by: opP, payload: rl(SetRateLimitCmd{Tier: "free"}), check: wantLimit("free", 60, 100)},
		{name: "explicit", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 1000, Burst: 50}), check: wantLimit("", 1000, 50)},
		{name: "explicit without burst", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 300}), check: wantLimit("", 300, 300)},
		{name: "route costs and adaptive bounds", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 100, Burst: 10,
			RouteCosts: map[string]int{"login": 5, "read": 1}, MinRequestsPerMinute: 10, MaxRequestsPerMinute: 200, Reason: "anomaly"}),
			check: func(t *testing.T, h *harness, res *Result) {
				lim, _ := limitOf(t, h.f, "acme")
				if lim.RouteCosts["login"] != 5 || lim.MinRequestsPerMinute != 10 || lim.Reason != "anomaly" {
					t.Errorf("limit = %+v, want route costs, bounds and reason kept", lim)
				}
			}},
		{name: "system principal", by: sysP, payload: rl(SetRateLimitCmd{Tier: "dev"}), check: wantLimit("dev", 100000, 200000)},
		{name: "tier and figures", by: opP, payload: rl(SetRateLimitCmd{Tier: "free", RequestsPerMinute: 5}), want: CodeInvalidArgument},
		{name: "unknown tier", by: opP, payload: rl(SetRateLimitCmd{Tier: "gold"}), want: CodeInvalidArgument},
		{name: "nothing", by: opP, payload: rl(SetRateLimitCmd{}), want: CodeInvalidArgument},
		{name: "negative rpm", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: -1}), want: CodeInvalidArgument},
		{name: "rpm too high", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: maxRPM + 1}), want: CodeInvalidArgument},
		{name: "burst too high", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 10, Burst: maxRPM + 1}), want: CodeInvalidArgument},
		{name: "route cost above burst", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 10, Burst: 10,
			RouteCosts: map[string]int{"login": 11}}), want: CodeInvalidArgument},
		{name: "route cost zero", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 10,
			RouteCosts: map[string]int{"login": 0}}), want: CodeInvalidArgument},
		{name: "empty route class", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 10,
			RouteCosts: map[string]int{"": 1}}), want: CodeInvalidArgument},
		{name: "too many route classes", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 10,
			RouteCosts: manyRoutes(257)}), want: CodeInvalidArgument},
		{name: "adaptive min above max", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 10,
			MinRequestsPerMinute: 20, MaxRequestsPerMinute: 10}), want: CodeInvalidArgument},
		{name: "control character in reason", by: opP, payload: rl(SetRateLimitCmd{RequestsPerMinute: 10, Reason: "a\x00"}), want: CodeInvalidArgument},
		{name: "missing tenant", by: opP, payload: rl(SetRateLimitCmd{Tenant: "nope", Tier: "free"}), want: CodeNotFound},
		{name: "tenant admin", by: acmeAdmin, payload: rl(SetRateLimitCmd{Tier: "unlimited"}), want: CodeForbidden},
		{name: "dev principal", by: devP, payload: rl(SetRateLimitCmd{Tenant: "dev-tenant", Tier: "unlimited"}), want: CodeForbidden},
	}
	for _, id := range badTenantIDs {
		cases[CmdSetRateLimit] = append(cases[CmdSetRateLimit], step{name: fmt.Sprintf("bad id %q", id), by: opP,
			payload: &SetRateLimitCmd{Tenant: id, Tier: "free"}, want: CodeInvalidArgument})
	}

	entry := func(tenant string) AuditInput {
		return AuditInput{Tenant: tenant, Time: baseTime.Add(-time.Hour), Action: ActionLoginFailed,
			Actor: Actor{Kind: PrincipalUser, ID: "u1", Name: "ann"}, Resource: "session", IP: "198.51.100.1"}
	}
	batch := func(es ...AuditInput) *AppendAuditCmd { return &AppendAuditCmd{Entries: es} }
	withEntry := func(f func(e *AuditInput)) *AppendAuditCmd {
		e := entry("acme")
		f(&e)
		return batch(e)
	}
	cases[CmdAppendAudit] = []step{
		{name: "system writes any tenant", by: sysP, payload: batch(entry("acme"), entry("globex"), entry("")),
			check: func(t *testing.T, h *harness, res *Result) {
				if res.Value != 3 {
					t.Errorf("value = %v, want 3 entries appended", res.Value)
				}
				es := allAudit(t, h.f, "acme")
				last := es[len(es)-1]
				if last.Action != ActionLoginFailed || last.Outcome != OutcomeSuccess || !last.Time.Equal(baseTime.Add(-time.Hour)) ||
					last.Actor.Name != "ann" || last.IP != "198.51.100.1" || last.Index != res.Index {
					t.Errorf("appended entry = %+v, want the proposed fields, outcome defaulted to success, index %d", last, res.Index)
				}
			}},
		{name: "tenant admin writes own", by: acmeAdmin, payload: batch(entry("acme"))},
		{name: "readonly member writes own", by: member("acme", auth.RoleReadOnly), payload: batch(entry("acme"))},
		{name: "full batch", by: sysP, payload: batch(repeatEntry(entry("globex"), maxAuditBatch)...)},
		{name: "tenant admin writes another", by: acmeAdmin, payload: batch(entry("globex")), want: CodeForbidden},
		{name: "tenant admin mixed batch", by: acmeAdmin, payload: batch(entry("acme"), entry("globex")), want: CodeForbidden},
		{name: "tenant admin writes cluster chain", by: acmeAdmin, payload: batch(entry("")), want: CodeForbidden},
		{name: "member without tenant writes cluster chain", by: Principal{Kind: PrincipalUser, ID: "u", Role: auth.RoleAdmin},
			payload: batch(entry("")), want: CodeForbidden},
		{name: "empty batch", by: sysP, payload: batch(), want: CodeInvalidArgument},
		{name: "oversized batch", by: sysP, payload: batch(repeatEntry(entry("acme"), maxAuditBatch+1)...), want: CodeInvalidArgument},
		{name: "no action", by: sysP, payload: withEntry(func(e *AuditInput) { e.Action = "" }), want: CodeInvalidArgument},
		{name: "bad tenant", by: sysP, payload: withEntry(func(e *AuditInput) { e.Tenant = "../x" }), want: CodeInvalidArgument},
		{name: "long resource", by: sysP, payload: withEntry(func(e *AuditInput) { e.Resource = longID(513) }), want: CodeInvalidArgument},
		{name: "long actor id", by: sysP, payload: withEntry(func(e *AuditInput) { e.Actor.ID = longID(129) }), want: CodeInvalidArgument},
		{name: "too much metadata", by: sysP, payload: withEntry(func(e *AuditInput) { e.Metadata = manyStrings(33) }), want: CodeInvalidArgument},
		{name: "long metadata key", by: sysP, payload: withEntry(func(e *AuditInput) {
			e.Metadata = map[string]string{longID(65): "v"}
		}), want: CodeInvalidArgument},
		{name: "one bad entry refuses the batch", by: sysP, payload: batch(entry("acme"), AuditInput{Tenant: "acme"}), want: CodeInvalidArgument},
	}

	cases[CmdAuditRetention] = []step{
		{name: "no cut-off", by: opP, payload: &AuditRetentionCmd{}, want: CodeInvalidArgument},
		{name: "tenant admin", by: acmeAdmin, payload: &AuditRetentionCmd{Before: baseTime.Add(time.Hour)}, want: CodeForbidden},
		{name: "nothing older", by: opP, payload: &AuditRetentionCmd{Before: baseTime}, check: func(t *testing.T, h *harness, res *Result) {
			if res.Value != 0 {
				t.Errorf("dropped = %v, want 0", res.Value)
			}
			es := allAudit(t, h.f, "")
			if last := es[len(es)-1]; last.Action != ActionAuditRetention || last.Metadata["dropped"] != "0" {
				t.Errorf("last cluster audit entry = %+v, want audit_retention with dropped 0", last)
			}
		}},
		{name: "everything so far", by: sysP, payload: &AuditRetentionCmd{Before: baseTime.Add(time.Hour)},
			check: func(t *testing.T, h *harness, res *Result) {
				// bootstrap (cluster chain) + one creation each in acme and globex
				// + the previous retention entry.
				if res.Value != 4 {
					t.Errorf("dropped = %v, want 4", res.Value)
				}
				verifyAll(t, h.f)
			}},
	}

	secret := func(name, wrapped string, replace bool) *SetSecretCmd {
		return &SetSecretCmd{Secret: Secret{Name: name, Wrapped: []byte(wrapped), KeyRef: "kms/pepper"}, Replace: replace}
	}
	wantSecret := func(wrapped string) func(t *testing.T, h *harness, res *Result) {
		return func(t *testing.T, h *harness, res *Result) {
			var s *Secret
			view(t, h.f, func(r *Reader) { s, _ = r.Secret("pepper") })
			if s == nil || string(s.Wrapped) != wrapped || string(res.Value.(*Secret).Wrapped) != wrapped {
				t.Errorf("stored %+v, returned %+v: want wrapped %q", s, res.Value, wrapped)
			}
		}
	}
	cases[CmdSetSecret] = []step{
		{name: "create", by: sysP, payload: secret("pepper", "first", false), check: wantSecret("first")},
		{name: "no overwrite", by: opP, payload: secret("pepper", "second", false), check: wantSecret("first")},
		{name: "replace", by: opP, payload: secret("pepper", "third", true), check: wantSecret("third")},
		{name: "no name", by: opP, payload: secret("", "x", false), want: CodeInvalidArgument},
		{name: "no value", by: opP, payload: secret("other", "", false), want: CodeInvalidArgument},
		{name: "long name", by: opP, payload: secret(longID(65), "x", false), want: CodeInvalidArgument},
		{name: "control character in name", by: opP, payload: secret("a\tb", "x", false), want: CodeInvalidArgument},
		{name: "tenant admin", by: acmeAdmin, payload: secret("pepper", "evil", true), want: CodeForbidden},
	}
	for c, steps := range identityHandlerCases() { // identity_test.go
		cases[c] = steps
	}
	for c, steps := range threatHandlerCases() { // anomalies_test.go
		cases[c] = steps
	}
	for c, steps := range kmsHandlerCases() { // kmskeys_test.go
		cases[c] = steps
	}
	return cases
}

func manyRoutes(n int) map[string]int {
	m := map[string]int{}
	for i := range n {
		m[fmt.Sprintf("r%d", i)] = 1
	}
	return m
}

func manyStrings(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

func repeatEntry(e AuditInput, n int) []AuditInput {
	out := make([]AuditInput, n)
	for i := range out {
		out[i] = e
	}
	return out
}

// TestHandlers runs every command type's cases, each type on its own FSM
// (seeded with an operator and tenants acme and globex, except bootstrap,
// which starts empty). A failing case must leave the state untouched.
func TestHandlers(t *testing.T) {
	all := handlerCases()
	for c := CmdNoop; c <= lastCommandType(); c++ {
		steps, ok := all[c]
		if !ok {
			t.Errorf("command type %s has no handler test cases", c)
			continue
		}
		var okN, errN int
		for _, s := range steps {
			if s.want == "" {
				okN++
			} else {
				errN++
			}
		}
		if okN == 0 || (errN == 0 && c != CmdNoop) {
			t.Errorf("command type %s has %d success and %d error cases; want at least one of each", c, okN, errN)
		}
		t.Run(c.String(), func(t *testing.T) {
			var h *harness
			if c == CmdBootstrapOperator {
				h = newHarness(t)
			} else {
				h = seeded(t)
			}
			for _, s := range steps {
				var res *Result
				if s.want == "" {
					before := dumpState(t, h.f)
					res = h.apply(c, s.by, s.payload)
					if res.Err != nil {
						t.Fatalf("%s: unexpected error %v", s.name, res.Err)
					}
					if c == CmdNoop && dumpState(t, h.f) != before {
						t.Fatalf("%s: noop changed the state", s.name)
					}
				} else {
					h.fails(c, s.by, s.payload, s.want)
				}
				if s.check != nil {
					t.Run(s.name, func(t *testing.T) { s.check(t, h, res) })
				}
			}
			verifyAll(t, h.f)
		})
	}
	for c := range all {
		if c < CmdNoop || c > lastCommandType() {
			t.Errorf("cases for %s, which is not a defined command type", c)
		}
	}
}
