package api_test

import (
	"encoding/json"

	"github.com/allsource/guard/fsm"
)

// refusalActions are the audit entries a refused request may leave behind
// (DESIGN.md §7: authentication failures and permission denials are audited).
var refusalActions = map[fsm.Action]bool{fsm.ActionAuthFailed: true, fsm.ActionPermissionDenied: true,
	fsm.ActionCrossTenantAttempt: true, fsm.ActionLoginFailed: true}

// nonAudit is the state outside the audit log, as JSON.
func (ts *testServer) nonAudit() string {
	var out []any
	_ = ts.srv.FSM().View(func(r *fsm.Reader) error {
		tenants, _ := r.Tenants("", 1000)
		out = append(out, tenants, r.SigningKeys(), r.Revocations(), r.IPRules("", 100000))
		for _, t := range tenants {
			users, _ := r.Users(t.ID, "", 100000)
			keys, _ := r.APIKeys(t.ID, "", 100000)
			lim, _ := r.RateLimit(t.ID)
			out = append(out, users, keys, r.IPRules(t.ID, 100000), lim)
		}
		op, _ := r.Operator()
		pep, _ := r.Secret(fsm.SecretPepper)
		out = append(out, op, pep)
		return nil
	})
	b, _ := json.Marshal(out)
	return string(b)
}

// onlyRefusalAudit waits for the audit batcher to deliver, then reports
// whether everything committed since before is refusal audit and the rest of
// the state is as it was; it fails the test when something else changed.
func (ts *testServer) onlyRefusalAudit(before state, what string) bool {
	ts.t.Helper()
	poll(ts.t, waitTimeout, what+": the audit batcher to settle", func() bool {
		return ts.srv.API().AuditIdle() && ts.srv.FSM().AppliedIndex() == ts.srv.Node().LastIndex()
	})
	if rest := ts.nonAudit(); rest != before.rest {
		ts.t.Errorf("%s: state outside the audit log changed:\n%s\n%s", what, before.rest, rest)
		return true
	}
	before2 := before
	var bad []string
	_ = ts.srv.FSM().View(func(r *fsm.Reader) error {
		for _, h := range r.AuditHeads() {
			es, _ := r.Audit(fsm.AuditQuery{Tenant: h.Tenant, Limit: 1000, After: 0})
			for _, e := range es {
				if e.Index > before2.lastIndex && !refusalActions[e.Action] {
					bad = append(bad, string(e.Action))
				}
			}
		}
		return nil
	})
	if len(bad) > 0 {
		ts.t.Errorf("%s: a refused request committed %v", what, bad)
	}
	return len(bad) == 0
}
