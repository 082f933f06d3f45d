package fsm

import (
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
)

// threatIDs are fixed 32-hex ids of the threat tests.
func threatID(c byte) string { return strings.Repeat(string(c), 32) }

// threatUser creates a user in tenant as the operator and returns its
// principal.
func threatUser(h *harness, tenant, name string, role auth.Role, id string) Principal {
	h.t.Helper()
	h.ok(CmdCreateUser, opP, &CreateUserCmd{ID: id, Tenant: tenant, Username: name, Role: role,
		PasswordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"})
	return Principal{Kind: PrincipalUser, ID: id, Tenant: tenant, Role: role, Name: name}
}

// bruteForce is an anomaly against user vic (threatID('1')) from 203.0.113.9
// whose responses lock vic, block the address and revoke a key that does
// not exist.
func bruteForce(seq uint64) *RecordAnomaliesCmd {
	until := baseTime.Add(time.Hour)
	return &RecordAnomaliesCmd{Marks: []ThreatMark{{Tenant: "acme", Seq: seq}}, Anomalies: []Anomaly{{
		ID: threatID('a'), Tenant: "acme", Kind: AnomalyBruteForce, Score: 0.75, Level: LevelBlock, Key: "bf:u:" + threatID('1'),
		Factors: []Factor{{Name: "failed_logins", Value: 6, Threshold: 5}}, Subject: Subject{UserID: threatID('1'), IP: "203.0.113.9"},
		Actor: Actor{Kind: PrincipalUser, ID: threatID('1'), Name: "vic"}, Summary: "6 failed logins", TriggerSeq: seq,
		TriggerTime: baseTime, Actions: []ResponseAction{
			{Kind: RespLockUser, Target: threatID('1'), Until: until},
			{Kind: RespBlockIP, Target: "203.0.113.9/32", Scope: "tenant", RuleID: threatID('b'), Until: until},
			{Kind: RespRevokeKey, Target: threatID('9')},
		}}}}
}

func threatHandlerCases() map[CommandType][]step {
	cases := map[CommandType][]step{}
	// vic (readonly) and boss (admin) of acme exist once setup ran.
	vicP := Principal{Kind: PrincipalUser, ID: threatID('1'), Tenant: "acme", Role: auth.RoleReadOnly, Name: "vic"}
	bossP := Principal{Kind: PrincipalUser, ID: threatID('2'), Tenant: "acme", Role: auth.RoleAdmin, Name: "boss"}
	setup := func(t *testing.T, h *harness, _ *Result) {
		threatUser(h, "acme", "vic", auth.RoleReadOnly, threatID('1'))
		threatUser(h, "acme", "boss", auth.RoleAdmin, threatID('2'))
	}
	bad := func(mut func(a *Anomaly)) *RecordAnomaliesCmd {
		c := bruteForce(5)
		mut(&c.Anomalies[0])
		return c
	}
	cases[CmdRecordAnomalies] = []step{
		{name: "operator may not", by: opP, payload: bruteForce(5), want: CodeForbidden, check: setup},
		{name: "record with responses", by: sysP, payload: bruteForce(5), check: func(t *testing.T, h *harness, res *Result) {
			rr := res.Value.(*RecordResult)
			if len(rr.Recorded) != 1 || rr.Skipped != 0 {
				t.Fatalf("result = %+v, want one recorded", rr)
			}
			a := rr.Recorded[0]
			if !a.Actions[0].Applied || !a.Actions[1].Applied || a.Actions[2].Applied || a.Actions[2].Result == "" {
				t.Fatalf("actions = %+v, want lock and block applied, revoke of a missing key refused", a.Actions)
			}
			if u := userOfT(t, h.f, "acme", threatID('1')); !u.Locked(baseTime.Add(30 * time.Minute)) {
				t.Errorf("user not locked: %+v", u)
			}
			var rule *IPRule
			view(t, h.f, func(r *Reader) { rule, _ = r.IPRule("acme", threatID('b')) })
			if rule == nil || rule.Action != IPBlock || rule.CIDR != "203.0.113.9/32" || rule.ExpiresAt.IsZero() {
				t.Errorf("block rule = %+v", rule)
			}
			var acts []Action
			for _, e := range allAudit(t, h.f, "acme") {
				acts = append(acts, e.Action)
			}
			got := strings.Join(func() []string {
				var s []string
				for _, a := range acts[len(acts)-3:] {
					s = append(s, string(a))
				}
				return s
			}(), ",")
			if got != "anomaly_detected,user_locked,ip_rule_added" {
				t.Errorf("last audit actions = %s", got)
			}
			var marks map[string]uint64
			view(t, h.f, func(r *Reader) { marks = r.ThreatMarks() })
			if marks["acme"] != 5 {
				t.Errorf("marks = %v", marks)
			}
		}},
		{name: "replayed by a new leader", by: sysP, payload: bruteForce(5), check: func(t *testing.T, h *harness, res *Result) {
			if rr := res.Value.(*RecordResult); len(rr.Recorded) != 0 || rr.Skipped != 1 {
				t.Fatalf("replay result = %+v, want skipped", rr)
			}
		}},
		{name: "same id, later mark", by: sysP, payload: bruteForce(9), check: func(t *testing.T, h *harness, res *Result) {
			if rr := res.Value.(*RecordResult); len(rr.Recorded) != 0 || rr.Skipped != 1 {
				t.Fatalf("result = %+v, want the known id skipped", rr)
			}
		}},
		{name: "mark from a replaced log", by: sysP, payload: func() *RecordAnomaliesCmd {
			c := bruteForce(12)
			c.Marks[0].Hash, c.Anomalies[0].ID = "not-the-hash-of-entry-12", threatID('e')
			return c
		}(), check: func(t *testing.T, h *harness, res *Result) {
			var marks map[string]uint64
			view(t, h.f, func(r *Reader) { marks = r.ThreatMarks() })
			if rr := res.Value.(*RecordResult); len(rr.Recorded) != 0 || rr.Skipped != 1 || marks["acme"] != 9 {
				t.Fatalf("result %+v, mark %d: want the stale mark and its anomaly ignored", rr, marks["acme"])
			}
		}},
		{name: "checkpoint", by: sysP, payload: &RecordAnomaliesCmd{Marks: []ThreatMark{{Tenant: "globex", Seq: 3}, {Tenant: "", Seq: 2}}},
			check: func(t *testing.T, h *harness, _ *Result) {
				var marks map[string]uint64
				view(t, h.f, func(r *Reader) { marks = r.ThreatMarks() })
				if marks["globex"] != 3 || marks[""] != 2 || marks["acme"] != 9 {
					t.Errorf("marks = %v", marks)
				}
			}},
		{name: "no marks", by: sysP, payload: &RecordAnomaliesCmd{}, want: CodeInvalidArgument},
		{name: "tenant marked twice", by: sysP, payload: &RecordAnomaliesCmd{Marks: []ThreatMark{{Tenant: "acme", Seq: 20}, {Tenant: "acme", Seq: 21}}}, want: CodeInvalidArgument},
		{name: "bad tenant", by: sysP, payload: &RecordAnomaliesCmd{Marks: []ThreatMark{{Tenant: "A B", Seq: 20}}}, want: CodeInvalidArgument},
		{name: "score above 1", by: sysP, payload: bad(func(a *Anomaly) { a.Score = 1.5 }), want: CodeInvalidArgument},
		{name: "unknown kind", by: sysP, payload: bad(func(a *Anomaly) { a.Kind = "gremlins" }), want: CodeInvalidArgument},
		{name: "unknown level", by: sysP, payload: bad(func(a *Anomaly) { a.Level = "panic" }), want: CodeInvalidArgument},
		{name: "bad id", by: sysP, payload: bad(func(a *Anomaly) { a.ID = "x" }), want: CodeInvalidArgument},
		{name: "lock without until", by: sysP, payload: bad(func(a *Anomaly) { a.Actions[0].Until = time.Time{} }), want: CodeInvalidArgument},
		{name: "global block needs no tenant but a prefix", by: sysP, payload: bad(func(a *Anomaly) { a.Actions[1].Target = "nope" }), want: CodeInvalidArgument},
		{name: "unknown response", by: sysP, payload: bad(func(a *Anomaly) { a.Actions[0].Kind = "smite" }), want: CodeInvalidArgument},
	}

	undo := func(id string) *UndoAnomalyCmd { return &UndoAnomalyCmd{Tenant: "acme", ID: id} }
	cases[CmdUndoAnomaly] = []step{
		{name: "unknown anomaly", by: opP, payload: undo(threatID('a')), want: CodeNotFound, check: func(t *testing.T, h *harness, r *Result) {
			setup(t, h, r)
			h.ok(CmdRecordAnomalies, sysP, bruteForce(5))
		}},
		{name: "readonly member", by: vicP, payload: undo(threatID('a')), want: CodeForbidden},
		{name: "other tenant's admin", by: adminOf("globex"), payload: undo(threatID('a')), want: CodeNotFound},
		{name: "tenant admin undoes", by: bossP, payload: undo(threatID('a')), check: func(t *testing.T, h *harness, res *Result) {
			a := res.Value.(*Anomaly)
			if a.UndoneAt.IsZero() || !a.Actions[0].Undone || !a.Actions[1].Undone || a.Actions[2].Undone {
				t.Fatalf("undone anomaly = %+v", a)
			}
			if u := userOfT(t, h.f, "acme", threatID('1')); u.Locked(baseTime.Add(30 * time.Minute)) {
				t.Errorf("user still locked")
			}
			view(t, h.f, func(r *Reader) {
				if _, ok := r.IPRule("acme", threatID('b')); ok {
					t.Errorf("block rule still there")
				}
			})
		}},
		{name: "twice", by: opP, payload: undo(threatID('a')), want: CodeFailedPrecondition, check: func(t *testing.T, h *harness, _ *Result) {
			// A global block is the operator's to undo.
			c := bruteForce(50)
			c.Anomalies[0].ID, c.Anomalies[0].Actions = threatID('c'), []ResponseAction{{Kind: RespBlockIP, Target: "203.0.113.10/32",
				Scope: "global", RuleID: threatID('d'), Until: baseTime.Add(time.Hour)}}
			h.ok(CmdRecordAnomalies, sysP, c)
		}},
		{name: "global block by a tenant admin", by: bossP, payload: undo(threatID('c')), want: CodeForbidden},
		{name: "global block by the operator", by: opP, payload: undo(threatID('c')), check: func(t *testing.T, h *harness, res *Result) {
			if a := res.Value.(*Anomaly); !a.Actions[0].Undone {
				t.Fatalf("global block not undone: %+v", a.Actions)
			}
			view(t, h.f, func(r *Reader) {
				if _, ok := r.IPRule("", threatID('d')); ok {
					t.Errorf("global block rule still there")
				}
			})
		}},
	}

	pol := func(tenant, scope string, lvl ResponseLevel) *SetThreatPolicyCmd {
		p := DefaultThreatPolicy(tenant)
		p.BlockIPScope, p.MaxLevel, p.RequireMFAForAdmins = scope, lvl, true
		return &SetThreatPolicyCmd{Policy: p}
	}
	cases[CmdSetThreatPolicy] = []step{
		{name: "operator sets a tenant policy", by: opP, payload: pol("acme", "global", LevelBlock), check: func(t *testing.T, h *harness, _ *Result) {
			var p ThreatPolicy
			view(t, h.f, func(r *Reader) { p = r.ThreatPolicy("acme") })
			if p.MaxLevel != LevelBlock || p.BlockIPScope != "global" || !p.RequireMFAForAdmins || p.UpdatedAt.IsZero() {
				t.Errorf("policy = %+v", p)
			}
		}},
		{name: "cluster policy", by: opP, payload: pol("", "global", LevelAlert)},
		{name: "cluster policy is global", by: opP, payload: pol("", "tenant", LevelAlert), want: CodeInvalidArgument},
		{name: "tenant admin may not choose global blocks", by: adminOf("acme"), payload: pol("acme", "global", LevelAlert), want: CodeForbidden},
		{name: "bad level", by: opP, payload: pol("acme", "tenant", "panic"), want: CodeInvalidArgument},
		{name: "bad duration", by: opP, payload: &SetThreatPolicyCmd{Policy: ThreatPolicy{Tenant: "acme", MaxLevel: LevelBlock, BlockIPScope: "tenant", LockUserFor: time.Second, BlockIPFor: time.Hour}}, want: CodeInvalidArgument},
		{name: "unknown tenant", by: opP, payload: pol("nope", "tenant", LevelAlert), want: CodeNotFound},
	}
	// MFA: vic enrols, activates, uses a recovery code; its admin boss resets.
	secret := []byte("ciphertext-of-the-totp-secret")
	enroll := &MFAEnrollCmd{Tenant: "acme", UserID: threatID('1'), Secret: secret}
	activate := &MFAActivateCmd{Tenant: "acme", UserID: threatID('1'), Secret: secret, Step: 100,
		RecoveryCodes: []auth.KeyHash{keyHashOf(1), keyHashOf(2)}}
	cases[CmdMFAEnroll] = []step{
		{name: "before the user exists", by: vicP, payload: enroll, want: CodeUnauthenticated, check: setup},
		{name: "self", by: vicP, payload: enroll, check: func(t *testing.T, h *harness, _ *Result) {
			var st *MFAState
			view(t, h.f, func(r *Reader) { st = r.MFAState("acme", threatID('1')) })
			if string(st.PendingSecret) != string(secret) {
				t.Errorf("pending = %q", st.PendingSecret)
			}
		}},
		{name: "other user", by: bossP, payload: enroll, want: CodeForbidden},
		{name: "empty secret", by: vicP, payload: &MFAEnrollCmd{Tenant: "acme", UserID: threatID('1')}, want: CodeInvalidArgument},
	}
	cases[CmdMFAActivate] = []step{
		{name: "before the user exists", by: vicP, payload: activate, want: CodeUnauthenticated, check: func(t *testing.T, h *harness, r *Result) {
			setup(t, h, r)
			h.ok(CmdMFAEnroll, vicP, enroll)
		}},
		{name: "another secret", by: vicP, payload: &MFAActivateCmd{Tenant: "acme", UserID: threatID('1'), Secret: []byte("x"), Step: 100,
			RecoveryCodes: activate.RecoveryCodes}, want: CodeFailedPrecondition},
		{name: "no recovery codes", by: vicP, payload: &MFAActivateCmd{Tenant: "acme", UserID: threatID('1'), Secret: secret, Step: 100}, want: CodeInvalidArgument},
		{name: "activate", by: vicP, payload: activate, check: func(t *testing.T, h *harness, _ *Result) {
			u := userOfT(t, h.f, "acme", threatID('1'))
			var req bool
			view(t, h.f, func(r *Reader) { req, _ = r.MFARequired(u) })
			if string(u.MFASecret) != string(secret) || u.MFALastStep != 100 || !req {
				t.Errorf("user after activation = %+v (required %v)", u, req)
			}
		}},
		{name: "again", by: vicP, payload: activate, want: CodeFailedPrecondition},
	}
	cases[CmdMFAUseRecovery] = []step{
		{name: "unknown user", by: sysP, payload: &MFAUseRecoveryCmd{Tenant: "acme", UserID: threatID('1'), Code: keyHashOf(1)},
			want: CodeNotFound, check: func(t *testing.T, h *harness, r *Result) {
				setup(t, h, r)
				h.ok(CmdMFAEnroll, vicP, enroll)
				h.ok(CmdMFAActivate, vicP, activate)
			}},
		{name: "use", by: sysP, payload: &MFAUseRecoveryCmd{Tenant: "acme", UserID: threatID('1'), Code: keyHashOf(2)},
			check: func(t *testing.T, h *harness, res *Result) {
				if res.Value.(*MFAUseRecoveryResult).Remaining != 1 {
					t.Errorf("remaining = %+v", res.Value)
				}
			}},
		{name: "used twice", by: sysP, payload: &MFAUseRecoveryCmd{Tenant: "acme", UserID: threatID('1'), Code: keyHashOf(2)}, want: CodeUnauthenticated},
		{name: "another user's principal", by: bossP, payload: &MFAUseRecoveryCmd{Tenant: "acme", UserID: threatID('1'), Code: keyHashOf(1)}, want: CodeForbidden},
	}
	cases[CmdMFADisable] = []step{
		{name: "other tenant", by: adminOf("globex"), payload: &MFADisableCmd{Tenant: "acme", UserID: threatID('1')}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, r *Result) {
				setup(t, h, r)
				h.ok(CmdMFAEnroll, vicP, enroll)
				h.ok(CmdMFAActivate, vicP, activate)
			}},
		{name: "admin resets", by: bossP, payload: &MFADisableCmd{Tenant: "acme", UserID: threatID('1')}, check: func(t *testing.T, h *harness, _ *Result) {
			u := userOfT(t, h.f, "acme", threatID('1'))
			var st *MFAState
			view(t, h.f, func(r *Reader) { st = r.MFAState("acme", threatID('1')) })
			if len(u.MFASecret) != 0 || u.MFALastStep != 0 || len(st.RecoveryCodes) != 0 {
				t.Errorf("after reset: user %+v, state %+v", u, st)
			}
		}},
		{name: "readonly may not reset others", by: vicP, payload: &MFADisableCmd{Tenant: "acme", UserID: threatID('2')}, want: CodeForbidden},
	}
	return cases
}

func keyHashOf(b byte) auth.KeyHash {
	var h auth.KeyHash
	for i := range h {
		h[i] = b
	}
	return h
}

func userOfT(t testing.TB, f *FSM, tenant, id string) *User {
	t.Helper()
	var u *User
	view(t, f, func(r *Reader) { u, _ = r.User(tenant, id) })
	if u == nil {
		t.Fatalf("user %s/%s not found", tenant, id)
	}
	return u
}
