package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/allsource/guard/auth"
	"github.com/hashicorp/raft"
)

// TestApplyRechecksAuthorization: Apply decides from the principal in the
// header, whatever the API decided before proposing.
func TestApplyRechecksAuthorization(t *testing.T) {
	h := seeded(t)
	name := func(s string) *string { return &s }

	// A tenant principal cannot create tenants, whatever its role.
	for _, p := range []Principal{adminOf("acme"), member("acme", auth.RoleOperator), devP,
		{Kind: PrincipalAPIKey, ID: "k", Tenant: "acme", Role: auth.RoleAdmin}} {
		h.fails(CmdCreateTenant, p, &CreateTenantCmd{ID: "evil"}, CodeForbidden)
	}
	// A tenant admin acting on another tenant is told it does not exist, and so
	// is the dev principal outside dev-tenant.
	h.fails(CmdUpdateTenant, adminOf("acme"), &UpdateTenantCmd{ID: "globex", Name: name("pwned")}, CodeNotFound)
	h.fails(CmdUpdateTenant, adminOf("acme"), &UpdateTenantCmd{ID: "nope", Name: name("x")}, CodeNotFound)
	h.fails(CmdUpdateTenant, devP, &UpdateTenantCmd{ID: "acme", Name: name("x")}, CodeNotFound)
	// A role lowered between the API's check and Apply: Apply wins.
	h.fails(CmdUpdateTenant, member("acme", auth.RoleReadOnly), &UpdateTenantCmd{ID: "acme", Name: name("x")}, CodeForbidden)
	h.ok(CmdUpdateTenant, adminOf("acme"), &UpdateTenantCmd{ID: "acme", Name: name("Acme by admin")})

	// Suspension stops the tenant's own principals at once, not the operator.
	h.ok(CmdSetTenantStatus, opP, &SetTenantStatusCmd{ID: "acme", Status: TenantSuspended})
	e := h.fails(CmdUpdateTenant, adminOf("acme"), &UpdateTenantCmd{ID: "acme", Name: name("while suspended")}, CodeForbidden)
	if !strings.Contains(e.Message, "suspended") {
		t.Errorf("error for a suspended tenant = %q, want it to say suspended", e.Message)
	}
	h.ok(CmdUpdateTenant, opP, &UpdateTenantCmd{ID: "acme", Name: name("Renamed by operator")})
	h.ok(CmdSetRateLimit, opP, &SetRateLimitCmd{Tenant: "acme", Tier: "free"})
	if ten, _ := tenantOf(t, h.f, "acme"); ten.Status != TenantSuspended || ten.Name != "Renamed by operator" {
		t.Fatalf("tenant = %+v, want still suspended and renamed by the operator", ten)
	}
	// Other tenants are unaffected.
	h.ok(CmdUpdateTenant, adminOf("globex"), &UpdateTenantCmd{ID: "globex", Name: name("Globex")})
	h.ok(CmdSetTenantStatus, opP, &SetTenantStatusCmd{ID: "acme", Status: TenantActive})
	h.ok(CmdUpdateTenant, adminOf("acme"), &UpdateTenantCmd{ID: "acme", Name: name("Back")})

	// Deleting a tenant does not let its admin act on a re-created one's
	// behalf either: same id, same rules.
	h.ok(CmdDeleteTenant, opP, &DeleteTenantCmd{ID: "globex"})
	h.fails(CmdUpdateTenant, adminOf("globex"), &UpdateTenantCmd{ID: "globex", Name: name("ghost")}, CodeNotFound)
	verifyAll(t, h.f)
}

// TestErrorsIs: business errors match their sentinels by code.
func TestErrorsIs(t *testing.T) {
	h := seeded(t)
	res := h.apply(CmdCreateTenant, opP, &CreateTenantCmd{ID: "acme"})
	err := res.Error()
	if err == nil || !errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) ||
		!errors.Is(err, &Error{Code: CodeConflict, Message: res.Err.Message}) || errors.Is(err, &Error{Code: CodeConflict, Message: "other"}) {
		t.Fatalf("duplicate create: %v; want errors.Is ErrConflict and not ErrNotFound", err)
	}
	if ok := (&Result{}).Error(); ok != nil {
		t.Fatalf("Result without error: Error() = %v, want nil", ok)
	}
}

// applyMustPanic applies logs as one batch and checks it panicked, left the
// state and applied index as they were, and released the FSM for later use.
func applyMustPanic(t *testing.T, h *harness, what string, logs ...*raft.Log) {
	t.Helper()
	before, idx := dumpState(t, h.f), h.f.AppliedIndex()
	v := mustPanic(t, what, func() { h.f.ApplyBatch(logs) })
	if !strings.HasPrefix(strings.TrimSpace(toString(v)), "fsm:") {
		t.Errorf("%s: panic value %q, want an fsm: message", what, toString(v))
	}
	if after := dumpState(t, h.f); after != before {
		t.Fatalf("%s: the panicking batch changed the state:\n%s", what, diffLines(before, after))
	}
	if got := h.f.AppliedIndex(); got != idx {
		t.Fatalf("%s: applied index moved from %d to %d", what, idx, got)
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if e, ok := v.(error); ok {
		return e.Error()
	}
	return ""
}

func TestCorruptEntriesPanic(t *testing.T) {
	h := seeded(t)
	good := mustEncode(t, CmdCreateTenant, h.header(opP), &CreateTenantCmd{ID: "good"})
	raw := func(c Command) []byte {
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hdr := h.header(opP)
	cases := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown encoding", append([]byte{3}, good[1:]...)},
		{"v1 envelope with a v2 body", append([]byte{1}, good[1:]...)},
		{"v2 envelope with a v1 body", append([]byte{2}, encodeV1(t, Command{Type: CmdCreateTenant, Header: hdr, Payload: []byte(`{"id":"x"}`)})[1:]...)},
		{"binary payload truncated", func() []byte {
			b := mustEncode(t, CmdAppendAudit, hdr, &AppendAuditCmd{Entries: []AuditInput{{Tenant: "acme", Action: ActionLogout}}})
			return b[:len(b)-1]
		}()},
		{"binary payload with trailing bytes", append(mustEncode(t, CmdAppendAudit, hdr,
			&AppendAuditCmd{Entries: []AuditInput{{Tenant: "acme", Action: ActionLogout}}}), 0)},
		{"binary payload of a command without a binary form", raw(Command{Type: CmdCreateTenant, Header: hdr, BinPayload: []byte{0}})},
		{"binary payload count beyond the input", raw(Command{Type: CmdTouchAPIKeys, Header: hdr, BinPayload: []byte{0xff, 0xff, 0x03}})},
		{"truncated envelope", good[:len(good)/2]},
		{"not json", []byte("\x01not json")},
		{"envelope is an array", []byte("\x01[]")},
		{"envelope field of the wrong type", []byte(`` + "\x01" + `{"t":"create_tenant"}`)},
		{"type 0", raw(Command{Type: CmdInvalid, Header: hdr})},
		{"unknown type", raw(Command{Type: 999, Header: hdr, Payload: []byte(`{}`)})},
		{"unknown type, other flags", raw(Command{Type: 999, Flags: 2, Header: hdr})},
		{"payload missing", raw(Command{Type: CmdCreateTenant, Header: hdr})},
		{"payload not an object", raw(Command{Type: CmdCreateTenant, Header: hdr, Payload: []byte(`"acme"`)})},
		{"payload field of the wrong type", raw(Command{Type: CmdSetRateLimit, Header: hdr, Payload: []byte(`{"tenant":"acme","burst":"lots"}`)})},
		{"audit payload wrong shape", raw(Command{Type: CmdAppendAudit, Header: hdr, Payload: []byte(`{"entries":{}}`)})},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			next := h.index + 1
			applyMustPanic(t, h, c.name, cmdLog(next, c.data))
			// The good entry before it in the same batch is rolled back too.
			applyMustPanic(t, h, c.name+" after a good entry", cmdLog(next, good), cmdLog(next+1, c.data))
		})
	}
	// The FSM is still usable, and closes (a panicking batch must not keep its lock).
	h.ok(CmdCreateTenant, opP, &CreateTenantCmd{ID: "after-panics"})
	closed := make(chan error, 1)
	go func() { closed <- h.f.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return: a panicking ApplyBatch kept the state lock")
	}
}

func TestUnknownIgnorableCommandIsSkipped(t *testing.T) {
	h := seeded(t)
	before := dumpState(t, h.f)
	data, err := Command{Type: lastCommandType() + 1, Flags: FlagIgnorable, Header: h.header(opP),
		Payload: []byte(`{"from":"the future"}`)}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	res := h.applyRaw(data)
	if res.Err != nil || res.Value != nil {
		t.Fatalf("ignorable unknown command: result %+v, want empty", res)
	}
	if got := h.f.AppliedIndex(); got != h.index {
		t.Fatalf("applied index = %d, want %d", got, h.index)
	}
	if after := dumpState(t, h.f); after != before {
		t.Fatalf("skipped command changed the state:\n%s", diffLines(before, after))
	}
	// The flag does not make a known command skippable.
	data, err = Command{Type: CmdCreateTenant, Flags: FlagIgnorable, Header: h.header(opP),
		Payload: []byte(`{"id":"flagged"}`)}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if res := h.applyRaw(data); res.Err != nil {
		t.Fatalf("known command with the ignorable flag: %v", res.Err)
	}
	if _, ok := tenantOf(t, h.f, "flagged"); !ok {
		t.Fatal("known command with the ignorable flag was not applied")
	}
}

func TestNonCommandEntriesAdvanceIndex(t *testing.T) {
	f := newFSM(t)
	for i, typ := range []raft.LogType{raft.LogNoop, raft.LogConfiguration, raft.LogBarrier} {
		idx := uint64(i + 1)
		if v := f.Apply(&raft.Log{Index: idx, Term: 1, Type: typ}); v != nil {
			t.Errorf("Apply(%v) = %v, want nil", typ, v)
		}
		if got := f.AppliedIndex(); got != idx {
			t.Errorf("after %v: applied index = %d, want %d", typ, got, idx)
		}
	}
	if out := f.ApplyBatch(nil); len(out) != 0 {
		t.Errorf("ApplyBatch(nil) = %v, want empty", out)
	}
}

func TestAppliedChAndCallbacks(t *testing.T) {
	var got []Change
	var lastIdx uint64
	f, err := Open(t.TempDir(), Options{Logger: quietLogger(), OnApply: func(idx uint64, ch []Change) {
		lastIdx = idx
		got = append(got, ch...)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	h := &harness{t: t, f: f}

	ch := f.AppliedCh(2)
	done := f.AppliedCh(0)
	select {
	case <-done:
	default:
		t.Fatal("AppliedCh(0) is not closed on a fresh FSM")
	}
	h.ok(CmdNoop, opP, nil)
	select {
	case <-ch:
		t.Fatal("AppliedCh(2) closed at index 1")
	default:
	}
	h.createTenant("acme", "free")
	select {
	case <-ch:
	default:
		t.Fatal("AppliedCh(2) not closed at index 2")
	}
	want := []Change{{Index: 2, Kind: ChangeTenant, Tenant: "acme", Key: "acme"}, {Index: 2, Kind: ChangeLimit, Tenant: "acme", Key: "acme"},
		{Index: 2, Kind: ChangeAudit, Tenant: "acme", Key: "0000000000000002-0001"}}
	// An audit change carries the appended entry (for in-process consumers).
	if len(got) == 3 {
		if a := got[2].Audit; a == nil || a.ID != "0000000000000002-0001" || a.Action != ActionTenantCreated {
			t.Fatalf("the audit change carries %+v, want the tenant_created entry", a)
		}
		got[2].Audit = nil
	}
	if !reflect.DeepEqual(got, want) || lastIdx != 2 {
		t.Fatalf("OnApply changes = %+v at %d, want %+v at 2", got, lastIdx, want)
	}
	got = nil
	h.fails(CmdCreateTenant, opP, &CreateTenantCmd{ID: "acme"}, CodeConflict)
	if got != nil {
		t.Fatalf("a failed command reported changes %+v", got)
	}
}

type runResult struct {
	snap    []byte
	results []string
	changes []Change
}

// run applies logs to a fresh FSM, in batches of the sizes sizes() returns
// (1 for one by one), and returns what a replica would expose.
func run(t *testing.T, logs []*raft.Log, sizes func() int) runResult {
	t.Helper()
	var rr runResult
	f, err := Open(t.TempDir(), Options{Logger: quietLogger(), OnApply: func(_ uint64, ch []Change) {
		rr.changes = append(rr.changes, ch...)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := 0; i < len(logs); {
		n := min(sizes(), len(logs)-i)
		var out []any
		if n == 1 {
			out = []any{f.Apply(logs[i])}
		} else {
			out = f.ApplyBatch(logs[i : i+n])
		}
		for _, o := range out {
			b, err := json.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			rr.results = append(rr.results, string(b))
		}
		i += n
	}
	if got, want := f.AppliedIndex(), logs[len(logs)-1].Index; got != want {
		t.Fatalf("applied index = %d, want %d", got, want)
	}
	verifyAll(t, f)
	rr.snap = snapshotBytes(t, f)
	return rr
}

// TestDeterminism: replicas fed the same log end byte-identical, whether they
// apply it one entry at a time or in batches of any size.
func TestDeterminism(t *testing.T) {
	logs := genLogs(t, randChooser{rand.New(rand.NewPCG(7, 42))}, 400)
	one := func() int { return 1 }
	a := run(t, logs, one)
	b := run(t, logs, one)
	sizes := rand.New(rand.NewPCG(1, 2))
	c := run(t, logs, func() int { return 1 + sizes.IntN(40) })
	d := run(t, logs, func() int { return len(logs) })

	// The run must be varied enough to mean something.
	var okN, errN int
	codes := map[string]bool{}
	for _, r := range a.results {
		var res struct{ Err *Error }
		_ = json.Unmarshal([]byte(r), &res)
		if res.Err != nil {
			errN++
			codes[string(res.Err.Code)] = true
		} else if r != "null" {
			okN++
		}
	}
	if okN < 50 || errN < 50 || len(codes) < 4 {
		t.Fatalf("generated log has %d successes and %d errors with codes %v; want a richer mix", okN, errN, codes)
	}

	for name, other := range map[string]runResult{"second replica": b, "random batches": c, "one batch": d} {
		if !bytes.Equal(a.snap, other.snap) {
			t.Errorf("%s: snapshot differs from the one-by-one replica (%d vs %d bytes)", name, len(other.snap), len(a.snap))
		}
		if !reflect.DeepEqual(a.results, other.results) {
			t.Errorf("%s: results differ from the one-by-one replica", name)
		}
		if !reflect.DeepEqual(a.changes, other.changes) {
			t.Errorf("%s: reported changes differ from the one-by-one replica", name)
		}
	}
}

// TestAuditEntriesShareSlabs: the entries of a batch's single-entry audit
// appends are allocated together, one slab per 32 commands, also in batches
// longer than that (raft hands followers up to 64 entries). Every command
// of such a batch used to allocate a fresh 32-entry slab.
func TestAuditEntriesShareSlabs(t *testing.T) {
	var entries []*AuditEntry
	f, err := Open(t.TempDir(), Options{Logger: quietLogger(), OnApply: func(_ uint64, ch []Change) {
		for _, c := range ch {
			if c.Audit != nil {
				entries = append(entries, c.Audit)
			}
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n = 64
	logs := make([]*raft.Log, n)
	for i := range logs {
		logs[i] = cmdLog(uint64(i+1), mustEncode(t, CmdAppendAudit, Header{Principal: sysP, Time: baseTime.UnixNano()},
			&AppendAuditCmd{Entries: []AuditInput{benchAuditInput(i)}}))
	}
	f.ApplyBatch(logs)
	if len(entries) != n {
		t.Fatalf("%d audit changes, want %d", len(entries), n)
	}
	slabs := 1
	for i := 1; i < n; i++ {
		if uintptr(unsafe.Pointer(entries[i])) != uintptr(unsafe.Pointer(entries[i-1]))+unsafe.Sizeof(AuditEntry{}) {
			slabs++
		}
	}
	if slabs > n/32 {
		t.Fatalf("the %d entries of one batch are in %d allocations, want at most %d", n, slabs, n/32)
	}
}

// TestHooksRunBeforeTheIndexMoves: OnApply sees the batch's changes before
// AppliedIndex and AppliedCh move past it, so a reader that waited for the
// index (a follower's KMS catch-up, a linearizable read) finds the caches
// OnApply invalidates already invalidated. The other order let a follower's
// KMS decrypt read a cached key record one rotation old.
func TestHooksRunBeforeTheIndexMoves(t *testing.T) {
	var f *FSM
	var during []uint64
	closedDuring := false
	f, err := Open(t.TempDir(), Options{Logger: quietLogger(), OnApply: func(idx uint64, _ []Change) {
		during = append(during, f.AppliedIndex())
		select {
		case <-f.AppliedCh(idx):
			closedDuring = true
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Apply(cmdLog(1, mustEncode(t, CmdCreateTenant, Header{Principal: sysP, Time: baseTime.UnixNano()},
		&CreateTenantCmd{ID: "acme", Name: "Acme"})))
	if len(during) != 1 || during[0] != 0 || closedDuring {
		t.Fatalf("during OnApply: applied index %v, index channel closed %v; want [0], false", during, closedDuring)
	}
	if f.AppliedIndex() != 1 {
		t.Fatalf("applied index after the batch = %d, want 1", f.AppliedIndex())
	}
}
