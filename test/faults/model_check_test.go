//go:build linux

package faults

import (
	"testing"
)

// TestLinearizabilityCheckerCatchesViolations shows the checker is not
// vacuous: it accepts histories the FSM may produce (including ambiguous
// writes that did or did not take effect) and rejects the anomalies a broken
// cluster would produce — a stale read after an acknowledged write, a lost
// acknowledged write, a double create. No Docker needed.
func TestLinearizabilityCheckerCatchesViolations(t *testing.T) {
	ok := func(kind opKind, call, ret int64, v int) op {
		return op{Kind: kind, Tenant: "t", Call: call, Ret: ret, Out: outOK, Value: v, Status: map[bool]string{true: "active", false: ""}[kind == opReadStatus]}
	}
	with := func(o op, f func(*op)) op { f(&o); return o }
	fail := func(kind opKind, call, ret int64, code string) op {
		return op{Kind: kind, Tenant: "t", Call: call, Ret: ret, Out: outFail, Code: code}
	}
	unknown := func(kind opKind, call int64, v int) op {
		return op{Kind: kind, Tenant: "t", Call: call, Ret: call + 5, Out: outUnknown, Value: v}
	}
	cases := []struct {
		name string
		ops  []op
		want int // violations
	}{
		{"sequential", []op{ok(opCreate, 0, 1, 0), ok(opReadRPM, 2, 3, 60), ok(opSetRPM, 4, 5, 1001), ok(opReadRPM, 6, 7, 1001),
			ok(opSuspend, 8, 9, 0), with(ok(opReadStatus, 10, 11, 0), func(o *op) { o.Status = "suspended" }),
			ok(opDelete, 12, 13, 0), fail(opReadRPM, 14, 15, "not_found"), fail(opSetRPM, 16, 17, "not_found")}, 0},
		{"concurrent writes either order", []op{ok(opCreate, 0, 1, 0), ok(opSetRPM, 2, 10, 1001), ok(opSetRPM, 3, 9, 1002),
			ok(opReadRPM, 11, 12, 1001)}, 0},
		{"ambiguous write that took effect", []op{ok(opCreate, 0, 1, 0), unknown(opSetRPM, 2, 1001), ok(opReadRPM, 20, 21, 1001)}, 0},
		{"ambiguous write that never did", []op{ok(opCreate, 0, 1, 0), unknown(opSetRPM, 2, 1001), ok(opReadRPM, 20, 21, 60)}, 0},
		{"ambiguous write seen then unseen", []op{ok(opCreate, 0, 1, 0), unknown(opSetRPM, 2, 1001), ok(opReadRPM, 20, 21, 1001),
			ok(opReadRPM, 22, 23, 60)}, 1},
		{"stale read after acknowledged write", []op{ok(opCreate, 0, 1, 0), ok(opSetRPM, 2, 3, 1001), ok(opReadRPM, 4, 5, 60)}, 1},
		{"lost acknowledged write", []op{ok(opCreate, 0, 1, 0), ok(opSetRPM, 2, 3, 1001), ok(opSetRPM, 4, 5, 1002),
			ok(opReadRPM, 6, 7, 1001)}, 1},
		{"double create", []op{ok(opCreate, 0, 1, 0), ok(opCreate, 2, 3, 0)}, 1},
		{"conflict on absent tenant", []op{fail(opCreate, 0, 1, "conflict")}, 1},
		{"read of a value never written", []op{ok(opCreate, 0, 1, 0), ok(opReadRPM, 2, 3, 4242)}, 1},
		{"unanswered reads and rejected writes are ignored", []op{ok(opCreate, 0, 1, 0),
			{Kind: opReadRPM, Tenant: "t", Call: 2, Ret: 3, Out: outUnknown, Value: 999},
			{Kind: opSetRPM, Tenant: "t", Call: 4, Ret: 5, Out: outRejected, Value: 999}, ok(opReadRPM, 6, 7, 60)}, 0},
	}
	t.Setenv("FAULTS_LOG_DIR", t.TempDir())
	// Ambiguous writes resolved against the audit log: one the log says never
	// happened must not be visible, one it says happened may be.
	amb := with(unknown(opSetRPM, 2, 1001), func(o *op) { o.RequestID = "w1" })
	seen := []op{ok(opCreate, 0, 1, 0), amb, ok(opReadRPM, 20, 21, 1001)}
	if r := checkLinearizable(seen, map[string]string{}, 0, "resolved-absent"); r.Violations != 1 {
		t.Errorf("a write the audit log calls absent was read back, yet violations = %d (%v)", r.Violations, r.Details)
	}
	if r := checkLinearizable(seen, map[string]string{"w1": ""}, 0, "resolved-present"); r.Violations != 0 {
		t.Errorf("a committed ambiguous write read back: violations = %d (%v)", r.Violations, r.Details)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := checkLinearizable(tc.ops, nil, 0, tc.name)
			if r.Violations != tc.want || r.Unknown != 0 {
				t.Fatalf("violations = %d, unknown = %d, want %d violations; details %v", r.Violations, r.Unknown, tc.want, r.Details)
			}
		})
	}
}

func TestLinearizabilityCheckerObjects(t *testing.T) {
	o := func(kind opKind, call, ret int64, out outcome, code, id string, seen map[string]string) op {
		return op{Kind: kind, Tenant: "k", Call: call, Ret: ret, Out: out, Code: code, Object: id, Seen: seen}
	}
	cases := []struct {
		name string
		ops  []op
		want int
	}{
		{"key life", []op{o(opCreateKey, 0, 1, outOK, "", "a", nil), o(opListKeys, 2, 3, outOK, "", "", map[string]string{"a": "active"}),
			o(opRevokeKey, 4, 5, outOK, "", "a", nil), o(opRevokeKey, 6, 7, outFail, "failed_precondition", "a", nil),
			o(opListKeys, 8, 9, outOK, "", "", map[string]string{"a": "revoked"})}, 0},
		{"revoked key listed active afterwards", []op{o(opCreateKey, 0, 1, outOK, "", "a", nil), o(opRevokeKey, 2, 3, outOK, "", "a", nil),
			o(opListKeys, 4, 5, outOK, "", "", map[string]string{"a": "active"})}, 1},
		{"acknowledged key missing from a later list", []op{o(opCreateKey, 0, 1, outOK, "", "a", nil),
			o(opListKeys, 2, 3, outOK, "", "", map[string]string{})}, 1},
		{"rule added and removed twice", []op{o(opAddRule, 0, 1, outOK, "", "r", nil), o(opListRules, 2, 3, outOK, "", "", map[string]string{"r": "present"}),
			o(opRemoveRule, 4, 5, outOK, "", "r", nil), o(opRemoveRule, 6, 7, outFail, "not_found", "r", nil),
			o(opListRules, 8, 9, outOK, "", "", map[string]string{})}, 0},
		{"removed rule still listed", []op{o(opAddRule, 0, 1, outOK, "", "r", nil), o(opRemoveRule, 2, 3, outOK, "", "r", nil),
			o(opListRules, 4, 5, outOK, "", "", map[string]string{"r": "present"})}, 1},
		{"object nobody created is listed", []op{o(opListRules, 0, 1, outOK, "", "", map[string]string{"ghost": "present"})}, 1},
	}
	t.Setenv("FAULTS_LOG_DIR", t.TempDir())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if r := checkLinearizable(tc.ops, nil, 0, tc.name); r.Violations != tc.want || r.Unknown != 0 {
				t.Fatalf("violations = %d, want %d; %v", r.Violations, tc.want, r.Details)
			}
		})
	}
}

func TestLinearizabilityMonotonicStaleReads(t *testing.T) {
	read := func(client int, node string, inc int64, call int64, idx uint64) op {
		return op{Client: client, Node: node, Inc: inc, IncAfter: inc, Kind: opStaleRead, Call: call, Ret: call + 1, Out: outOK, Index: idx}
	}
	ops := []op{read(1, "s1", 1, 0, 10), read(1, "s1", 1, 2, 12), read(1, "s2", 1, 3, 5), // another node: new session
		read(1, "s1", 2, 4, 3),                          // s1 restarted: new session
		read(2, "s1", 2, 5, 11), read(2, "s1", 2, 6, 9)} // goes back: violation
	reads, v, details := checkMonotonicStale(ops)
	if reads != 6 || v != 1 {
		t.Fatalf("reads = %d, violations = %d (%v), want 6 and 1", reads, v, details)
	}
}
