package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// populated returns a harness whose FSM holds every kind of record the
// commands so far write.
func populated(t testing.TB) *harness {
	t.Helper()
	h := seeded(t)
	h.createTenant("initech", "unlimited")
	h.ok(CmdSetRateLimit, opP, &SetRateLimitCmd{Tenant: "acme", RequestsPerMinute: 900, Burst: 90,
		RouteCosts: map[string]int{"login": 3}})
	h.ok(CmdSetTenantStatus, opP, &SetTenantStatusCmd{ID: "globex", Status: TenantSuspended})
	h.ok(CmdSetSecret, sysP, &SetSecretCmd{Secret: Secret{Name: "pepper", Wrapped: []byte{0, 1, 2, 255}, KeyRef: "k1"}})
	es := make([]AuditInput, 25)
	for i := range es {
		es[i] = AuditInput{Tenant: []string{"acme", "globex", ""}[i%3],
			Time: baseTime.Add(time.Duration(i) * time.Minute), Action: ActionLoginFailed,
			Actor: Actor{Kind: PrincipalUser, ID: "u1"}, Metadata: map[string]string{"i": itoa(i)}}
	}
	h.ok(CmdAppendAudit, sysP, &AppendAuditCmd{Entries: es})
	h.ok(CmdDeleteTenant, opP, &DeleteTenantCmd{ID: "initech"})
	return h
}

// readerView is what the typed readers return, for comparing two FSMs.
type readerView struct {
	Index    uint64
	Tenants  []*Tenant
	Limits   map[string]*RateLimit
	Audit    map[string][]*AuditEntry
	Heads    []AuditHead
	Operator *OperatorToken
	Secret   *Secret
}

func readAll(t testing.TB, f *FSM) readerView {
	t.Helper()
	v := readerView{Limits: map[string]*RateLimit{}, Audit: map[string][]*AuditEntry{}}
	view(t, f, func(r *Reader) {
		v.Index = r.AppliedIndex()
		v.Tenants, _ = r.Tenants("", 1000)
		for _, ten := range v.Tenants {
			v.Limits[ten.ID], _ = r.RateLimit(ten.ID)
		}
		v.Heads = r.AuditHeads()
		v.Operator, _ = r.Operator()
		v.Secret, _ = r.Secret("pepper")
	})
	for _, hd := range v.Heads {
		v.Audit[hd.Tenant] = allAudit(t, f, hd.Tenant)
	}
	return v
}

func restore(f *FSM, b []byte) error { return f.Restore(io.NopCloser(bytes.NewReader(b))) }

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	src := populated(t)
	want := snapshotBytes(t, src.f)
	got := persist(t, src.f)
	if !bytes.Equal(got, want) {
		t.Fatalf("Persist wrote %d bytes, WriteSnapshotTo %d: the two must agree", len(got), len(want))
	}
	if err := ValidateSnapshot(bytes.NewReader(got)); err != nil {
		t.Fatalf("ValidateSnapshot of a fresh snapshot: %v", err)
	}

	var restoredAt uint64
	dst, err := Open(t.TempDir(), Options{Logger: quietLogger(), OnRestore: func(idx uint64) { restoredAt = idx }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dst.Close() })
	waiter := dst.AppliedCh(src.index)
	if err := restore(dst, got); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !bytes.Equal(snapshotBytes(t, dst), want) {
		t.Fatal("restored FSM writes a different snapshot than its source")
	}
	if dst.AppliedIndex() != src.index || restoredAt != src.index {
		t.Fatalf("restored applied index %d, OnRestore(%d); want %d", dst.AppliedIndex(), restoredAt, src.index)
	}
	select {
	case <-waiter:
	default:
		t.Fatal("AppliedCh waiter not released by Restore")
	}
	a, b := readAll(t, src.f), readAll(t, dst)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("readers disagree after restore:\nsource   %+v\nrestored %+v", a, b)
	}
	if len(a.Tenants) != 2 || a.Secret == nil || a.Operator == nil || len(a.Audit["acme"]) < 2 {
		t.Fatalf("source state too thin to mean anything: %+v", a)
	}
	verifyAll(t, dst)

	// The restored replica goes on applying exactly like its source.
	next := src.header(opP)
	for _, f := range []*FSM{src.f, dst} {
		f.Apply(cmdLog(src.index+1, mustEncode(t, CmdCreateTenant, next, &CreateTenantCmd{ID: "after"})))
	}
	if !bytes.Equal(snapshotBytes(t, src.f), snapshotBytes(t, dst)) {
		t.Fatal("source and restored replica diverge on the next entry")
	}

	// Restoring over existing state replaces it entirely.
	other := newHarness(t)
	other.createTenant("zzz", "free")
	if err := restore(other.f, want); err != nil {
		t.Fatal(err)
	}
	if _, ok := tenantOf(t, other.f, "zzz"); ok {
		t.Fatal("restore kept a tenant that is not in the snapshot")
	}
	if !bytes.Equal(snapshotBytes(t, other.f), want) {
		t.Fatal("restore over existing state differs from the snapshot")
	}
}

func TestRestoreRefusesBadStreams(t *testing.T) {
	good := snapshotBytes(t, populated(t).f)
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x20
		return b
	}
	cases := map[string][]byte{
		"empty":              {},
		"magic only":         good[:len(snapMagic)],
		"bad magic":          append([]byte("ASGSNAP\x02"), good[len(snapMagic):]...),
		"truncated in body":  good[:len(good)/2],
		"no end record":      good[:len(good)-33],
		"truncated checksum": good[:len(good)-1],
		"flipped body byte":  flip(len(good) / 3),
		"flipped checksum":   flip(len(good) - 1),
		"unknown record":     append(append(bytes.Clone(good[:len(snapMagic)]), 'X'), good[len(snapMagic):]...),
		"entry before bucket": craftSnapshot(func(w *snapWriter) {
			w.kv("k", "v")
		}),
		"empty bucket name": craftSnapshot(func(w *snapWriter) { w.bucket("") }),
		"empty key":         craftSnapshot(func(w *snapWriter) { w.bucket("tenants"); w.kv("", "v") }),
		"oversized record": func() []byte {
			b := append(bytes.Clone(snapMagic), recBucket)
			return binary.AppendUvarint(b, maxRecord+1)
		}(),
		// bolt refuses keys over MaxKeySize, and raft panics when a user
		// restore fails after validation: validation must refuse them.
		"key over bolt's limit": craftSnapshot(func(w *snapWriter) {
			w.bucket("tenants")
			w.kv(strings.Repeat("k", bolt.MaxKeySize+1), "{}")
		}),
		"bucket name over bolt's limit": craftSnapshot(func(w *snapWriter) { w.bucket(strings.Repeat("b", bolt.MaxKeySize+1)) }),
	}
	for i := 1; i < len(good); i += len(good) / 17 {
		cases["prefix "+itoa(i)] = good[:i]
	}
	h := seeded(t)
	before, idx := snapshotBytes(t, h.f), h.f.AppliedIndex()
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if err := ValidateSnapshot(bytes.NewReader(b)); !errors.Is(err, ErrBadSnapshot) {
				t.Errorf("ValidateSnapshot: %v, want ErrBadSnapshot", err)
			}
			if err := restore(h.f, b); !errors.Is(err, ErrBadSnapshot) {
				t.Errorf("Restore: %v, want ErrBadSnapshot", err)
			}
			if !bytes.Equal(snapshotBytes(t, h.f), before) || h.f.AppliedIndex() != idx {
				t.Fatal("a refused restore changed the state")
			}
		})
	}
	// Still fully usable afterwards.
	h.createTenant("still-works", "free")
	if err := restore(h.f, good); err != nil {
		t.Fatalf("restore of the good snapshot after refused ones: %v", err)
	}
}

// TestCraftedSnapshotAtBoltLimits: a stream at the limits bolt accepts
// validates and restores (the other side of the key-size check).
func TestCraftedSnapshotAtBoltLimits(t *testing.T) {
	b := craftSnapshot(func(w *snapWriter) {
		w.bucket("extra")
		w.kv(strings.Repeat("k", bolt.MaxKeySize), "")
		w.bucket(strings.Repeat("b", bolt.MaxKeySize))
	})
	if err := ValidateSnapshot(bytes.NewReader(b)); err != nil {
		t.Fatalf("ValidateSnapshot: %v", err)
	}
	if err := restore(newFSM(t), b); err != nil {
		t.Fatalf("Restore: %v", err)
	}
}

// TestSnapshotIsPointInTime: Persist streams the state as of Snapshot(), even
// while later entries are applied.
func TestSnapshotIsPointInTime(t *testing.T) {
	h := populated(t)
	want := snapshotBytes(t, h.f)
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()

	// Apply more while a Persist runs concurrently.
	var sink memSink
	persisted := make(chan error, 1)
	start := make(chan struct{})
	go func() {
		<-start
		persisted <- snap.Persist(&sink)
	}()
	h.createTenant("later-1", "free")
	close(start)
	for i := range 20 {
		h.ok(CmdAppendAudit, sysP, &AppendAuditCmd{Entries: []AuditInput{{Tenant: "acme", Action: ActionLogout,
			Time: baseTime.Add(time.Duration(i) * time.Hour)}}})
	}
	h.ok(CmdDeleteTenant, opP, &DeleteTenantCmd{ID: "acme"})
	if err := <-persisted; err != nil {
		t.Fatalf("Persist: %v", err)
	}
	if !bytes.Equal(sink.Bytes(), want) {
		t.Fatal("persisted snapshot includes entries applied after Snapshot()")
	}
	if bytes.Equal(snapshotBytes(t, h.f), want) {
		t.Fatal("the later entries changed nothing; the test proves nothing")
	}
	// And it restores to exactly that point.
	f := newFSM(t)
	if err := restore(f, sink.Bytes()); err != nil {
		t.Fatal(err)
	}
	if _, ok := tenantOf(t, f, "later-1"); ok {
		t.Fatal("restored state holds a tenant created after Snapshot()")
	}
	if _, ok := tenantOf(t, f, "acme"); !ok {
		t.Fatal("restored state misses a tenant deleted after Snapshot()")
	}
}

// failingSink fails every write after n bytes.
type failingSink struct {
	memSink
	n int
}

func (s *failingSink) Write(p []byte) (int, error) {
	if s.Len()+len(p) > s.n {
		return 0, errors.New("disk full")
	}
	return s.memSink.Write(p)
}

func TestPersistFailureCancelsSink(t *testing.T) {
	h := populated(t)
	snap, err := h.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &failingSink{n: 10}
	if err := snap.Persist(sink); err == nil {
		t.Fatal("Persist into a failing sink succeeded")
	}
	if !sink.cancelled || sink.closed {
		t.Fatalf("failing Persist: cancelled=%v closed=%v, want cancelled and not closed", sink.cancelled, sink.closed)
	}
}

var _ raft.SnapshotSink = (*failingSink)(nil)

// snapWriter builds snapshot streams record by record, with a correct
// checksum, for inputs a real store never writes.
type snapWriter struct{ buf bytes.Buffer }

func (w *snapWriter) field(s string) {
	w.buf.Write(binary.AppendUvarint(nil, uint64(len(s))))
	w.buf.WriteString(s)
}

func (w *snapWriter) bucket(name string) {
	w.buf.WriteByte(recBucket)
	w.field(name)
}

func (w *snapWriter) kv(k, v string) {
	w.buf.WriteByte(recKV)
	w.field(k)
	w.field(v)
}

func craftSnapshot(fn func(w *snapWriter)) []byte {
	var w snapWriter
	w.buf.Write(snapMagic)
	fn(&w)
	return sealSnapshot(w.buf.Bytes())
}

// sealSnapshot appends the end record with the checksum of b.
func sealSnapshot(b []byte) []byte {
	sum := sha256.Sum256(b)
	return append(append(bytes.Clone(b), recEnd), sum[:]...)
}
