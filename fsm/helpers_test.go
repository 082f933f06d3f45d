package fsm

import (
	"bytes"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Principals used across the tests.
var (
	sysP = Principal{Kind: PrincipalSystem, ID: "n1", Name: "bootstrap"}
	opP  = Principal{Kind: PrincipalOperator, ID: "root", Name: "operator", Role: auth.RoleOperator}
	devP = Principal{Kind: PrincipalDev, ID: "dev-user", Name: "dev-user", Tenant: "dev-tenant", Role: auth.RoleAdmin}
)

// member returns a user principal of tenant with role.
func member(tenant string, role auth.Role) Principal {
	return Principal{Kind: PrincipalUser, ID: "u-" + tenant + "-" + string(role), Tenant: tenant, Role: role,
		Name: string(role) + "@" + tenant}
}

func adminOf(tenant string) Principal { return member(tenant, auth.RoleAdmin) }

// baseTime is the proposer clock of the tests: entry i is proposed at baseTime+i s.
var baseTime = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newFSM opens an FSM in a fresh directory and closes it when the test ends.
func newFSM(t testing.TB) *FSM {
	t.Helper()
	f, err := Open(t.TempDir(), Options{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// fataler is the part of testing.TB (and rapid.T) the helpers need.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

// mustEncode builds and encodes a command, failing the test on error.
func mustEncode(t fataler, typ CommandType, h Header, payload any) []byte {
	t.Helper()
	c, err := NewCommand(typ, h, payload)
	if err != nil {
		t.Fatalf("NewCommand(%s): %v", typ, err)
	}
	b, err := c.Encode()
	if err != nil {
		t.Fatalf("Encode(%s): %v", typ, err)
	}
	return b
}

func cmdLog(index uint64, data []byte) *raft.Log {
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}
}

// harness applies commands to one FSM at increasing indexes.
type harness struct {
	t     testing.TB
	f     *FSM
	index uint64
}

func newHarness(t testing.TB) *harness { return &harness{t: t, f: newFSM(t)} }

// header is the header of the next entry, proposed by p.
func (h *harness) header(p Principal) Header {
	return Header{Principal: p, Time: baseTime.Add(time.Duration(h.index+1) * time.Second).UnixNano(),
		RequestID: fmt.Sprintf("req-%d", h.index+1), IP: "192.0.2.7", UserAgent: "fsm-test"}
}

// apply proposes one command by p and returns its result.
func (h *harness) apply(typ CommandType, p Principal, payload any) *Result {
	h.t.Helper()
	return h.applyRaw(mustEncode(h.t, typ, h.header(p), payload))
}

func (h *harness) applyRaw(data []byte) *Result {
	h.t.Helper()
	h.index++
	res, ok := h.f.Apply(cmdLog(h.index, data)).(*Result)
	if !ok || res == nil {
		h.t.Fatalf("Apply at %d returned %T, want *Result", h.index, res)
	}
	if res.Index != h.index {
		h.t.Fatalf("result index = %d, want %d", res.Index, h.index)
	}
	return res
}

// ok applies a command that must succeed and returns its value.
func (h *harness) ok(typ CommandType, p Principal, payload any) any {
	h.t.Helper()
	res := h.apply(typ, p, payload)
	if res.Err != nil {
		h.t.Fatalf("%s by %s/%s: unexpected error %v", typ, p.Kind, p.Tenant, res.Err)
	}
	return res.Value
}

// fails applies a command that must fail with code and change nothing but the
// applied index.
func (h *harness) fails(typ CommandType, p Principal, payload any, code Code) *Error {
	h.t.Helper()
	before := dumpState(h.t, h.f)
	res := h.apply(typ, p, payload)
	if res.Err == nil {
		h.t.Fatalf("%s by %s/%s: succeeded (value %+v), want %s", typ, p.Kind, p.Tenant, res.Value, code)
	}
	if res.Err.Code != code {
		h.t.Fatalf("%s by %s/%s: error %v, want code %s", typ, p.Kind, p.Tenant, res.Err, code)
	}
	if after := dumpState(h.t, h.f); after != before {
		h.t.Fatalf("%s failed with %v but changed the state:\n%s", typ, res.Err, diffLines(before, after))
	}
	return res.Err
}

// createTenant creates tenant id as the operator.
func (h *harness) createTenant(id, tier string) *Tenant {
	h.t.Helper()
	return h.ok(CmdCreateTenant, opP, &CreateTenantCmd{ID: id, Name: "Tenant " + id, Tier: tier}).(*Tenant)
}

// seeded returns a harness with a bootstrapped operator and tenants acme and globex.
func seeded(t testing.TB) *harness {
	h := newHarness(t)
	h.ok(CmdBootstrapOperator, sysP, &BootstrapOperatorCmd{Token: OperatorToken{ID: "root", Hash: strings.Repeat("ab", 32)}})
	h.createTenant("acme", "professional")
	h.createTenant("globex", "free")
	return h
}

// view runs fn on a read view and fails the test on error.
func view(t testing.TB, f *FSM, fn func(r *Reader)) {
	t.Helper()
	if err := f.View(func(r *Reader) error { fn(r); return nil }); err != nil {
		t.Fatalf("View: %v", err)
	}
}

func tenantOf(t testing.TB, f *FSM, id string) (*Tenant, bool) {
	t.Helper()
	var ten *Tenant
	var ok bool
	view(t, f, func(r *Reader) { ten, ok = r.Tenant(id) })
	return ten, ok
}

func limitOf(t testing.TB, f *FSM, id string) (*RateLimit, bool) {
	t.Helper()
	var l *RateLimit
	var ok bool
	view(t, f, func(r *Reader) { l, ok = r.RateLimit(id) })
	return l, ok
}

// allAudit returns every retained entry of tenant's chain.
func allAudit(t testing.TB, f *FSM, tenant string) []*AuditEntry {
	t.Helper()
	var out []*AuditEntry
	var after uint64
	for {
		var page []*AuditEntry
		var next uint64
		view(t, f, func(r *Reader) { page, next = r.Audit(AuditQuery{Tenant: tenant, After: after, Limit: 1000}) })
		out = append(out, page...)
		if next == 0 {
			return out
		}
		after = next
	}
}

func verify(t testing.TB, f *FSM, tenant string) ChainReport {
	t.Helper()
	var rep ChainReport
	view(t, f, func(r *Reader) { rep = r.VerifyAudit(tenant) })
	return rep
}

// verifyAll checks every audit chain of f.
func verifyAll(t testing.TB, f *FSM) {
	t.Helper()
	var heads []AuditHead
	view(t, f, func(r *Reader) { heads = r.AuditHeads() })
	for _, h := range heads {
		if rep := verify(t, f, h.Tenant); !rep.OK {
			t.Fatalf("audit chain %q does not verify: %+v", h.Tenant, rep)
		}
	}
}

// snapshotBytes is f's state in snapshot format.
func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := f.WriteSnapshotTo(&buf); err != nil {
		t.Fatalf("WriteSnapshotTo: %v", err)
	}
	return buf.Bytes()
}

// dumpState renders every record except the applied index, one per line, so a
// test can tell that a command changed nothing.
func dumpState(t testing.TB, f *FSM) string {
	t.Helper()
	var lines []string
	err := f.View(func(r *Reader) error {
		return r.tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				if string(name) == string(bMeta) && string(k) == string(keyAppliedIndex) {
					return nil
				}
				lines = append(lines, fmt.Sprintf("%s/%q = %s", name, k, v))
				return nil
			})
		})
	})
	if err != nil {
		t.Fatalf("dumpState: %v", err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func diffLines(before, after string) string {
	b := map[string]bool{}
	for _, l := range strings.Split(before, "\n") {
		b[l] = true
	}
	a := map[string]bool{}
	var out []string
	for _, l := range strings.Split(after, "\n") {
		a[l] = true
		if !b[l] {
			out = append(out, "+ "+l)
		}
	}
	for _, l := range strings.Split(before, "\n") {
		if !a[l] {
			out = append(out, "- "+l)
		}
	}
	return strings.Join(out, "\n")
}

// rawUpdate writes to the state file behind Apply's back (tamper tests).
func (f *FSM) rawUpdate(fn func(tx *bolt.Tx) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.commitOpen(); err != nil {
		return err
	}
	return f.db.Update(fn)
}

// mustPanic runs fn and returns the panic value, failing if fn returns normally.
func mustPanic(t testing.TB, what string, fn func()) (v any) {
	t.Helper()
	defer func() {
		v = recover()
		if v == nil {
			t.Fatalf("%s: did not panic", what)
		}
	}()
	fn()
	return nil
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string { return "mem" }
func (s *memSink) Close() error {
	s.closed = true
	return nil
}
func (s *memSink) Cancel() error {
	s.cancelled = true
	return nil
}

var _ raft.SnapshotSink = (*memSink)(nil)

// persist takes a snapshot of f through the raft interfaces.
func persist(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("Persist left the sink closed=%v cancelled=%v, want closed and not cancelled", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}
