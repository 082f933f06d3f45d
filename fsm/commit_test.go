package fsm

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// groupLogs builds n raft batches starting at index first: audit appends to
// a few tenants (one or three entries), noops, and every seventh batch a
// command that commits on its own (a tenant, a rate limit), so the open
// transaction is committed and reopened along the way.
func groupLogs(t testing.TB, first uint64, n int) [][]*raft.Log {
	t.Helper()
	hdr := func(i uint64) Header {
		return Header{Principal: sysP, Time: baseTime.Add(time.Duration(i) * time.Second).UnixNano(), RequestID: fmt.Sprintf("r%d", i)}
	}
	var out [][]*raft.Log
	idx := first
	for b := 0; b < n; b++ {
		var batch []*raft.Log
		for j := 0; j <= b%3; j++ {
			var data []byte
			switch {
			case b%7 == 6 && j == 0:
				data = mustEncode(t, CmdCreateTenant, Header{Principal: opP, Time: hdr(idx).Time},
					&CreateTenantCmd{ID: fmt.Sprintf("t%d", b), Name: "T", Tier: "free"})
			case (b+j)%5 == 4:
				data = mustEncode(t, CmdNoop, hdr(idx), nil)
			default:
				in := make([]AuditInput, 1+2*(j%2))
				for k := range in {
					in[k] = benchAuditInput(int(idx)*4 + k)
					in[k].Tenant = []string{"acme", "globex", ""}[(b+k)%3]
				}
				data = mustEncode(t, CmdAppendAudit, hdr(idx), &AppendAuditCmd{Entries: in})
			}
			batch = append(batch, cmdLog(idx, data))
			idx++
		}
		out = append(out, batch)
	}
	return out
}

// TestGroupCommitMatchesCommitPerBatch: batches applied into the open
// transaction leave the state (snapshot bytes) that committing each batch
// on its own leaves, and every read sees every applied batch.
func TestGroupCommitMatchesCommitPerBatch(t *testing.T) {
	grouped, perBatch := seeded(t), seeded(t)
	batches := groupLogs(t, grouped.index+1, 60)
	opened := 0
	for i, logs := range batches {
		grouped.f.ApplyBatch(logs)
		if grouped.f.pending.Load() {
			opened++
		}
		perBatch.f.ApplyBatch(logs)
		// A read commits the open transaction: perBatch commits every batch.
		last := logs[len(logs)-1].Index
		view(t, perBatch.f, func(r *Reader) {
			if got := r.AppliedIndex(); got != last {
				t.Fatalf("batch %d: read sees applied index %d, want %d", i, got, last)
			}
		})
		if perBatch.f.pending.Load() {
			t.Fatalf("batch %d: a transaction is still open after a read", i)
		}
	}
	if opened == 0 {
		t.Fatal("no batch was left in an open transaction: the test exercised nothing")
	}
	if g, p := snapshotBytes(t, grouped.f), snapshotBytes(t, perBatch.f); !bytes.Equal(g, p) {
		t.Fatalf("grouped commits: snapshot differs from commit per batch\n%s", diffLines(dumpState(t, perBatch.f), dumpState(t, grouped.f)))
	}
	verifyAll(t, grouped.f)
	if got, want := len(allAudit(t, grouped.f, "globex")), len(allAudit(t, perBatch.f, "globex")); got != want || got < 20 {
		t.Fatalf("globex chain: %d entries grouped, %d per batch", got, want)
	}
}

// TestGroupCommitCommitsByItself: an open transaction is committed
// flushDelay after its batch without anything reading.
func TestGroupCommitCommitsByItself(t *testing.T) {
	h := seeded(t)
	h.f.ApplyBatch(groupLogs(t, h.index+1, 1)[0])
	if !h.f.pending.Load() {
		t.Fatal("an audit batch was not left open")
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.f.pending.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the open transaction was not committed within 10 s")
		}
		time.Sleep(time.Millisecond) // waiting for the flush timer
	}
}

// TestGroupCommitBounds: batches commit on their own near the end of bolt's
// map and when large; the open transaction commits when it holds
// maxOpenLogs entries.
func TestGroupCommitBounds(t *testing.T) {
	h := seeded(t)
	h.f.flushDelay = time.Hour // only the bounds commit
	h.f.nearRemap.Store(true)
	logs := groupLogs(t, h.index+1, 1)[0]
	h.f.ApplyBatch(logs)
	if h.f.pending.Load() {
		t.Fatal("near the end of the map, a batch was left open")
	}
	h.f.nearRemap.Store(false)
	h.index = logs[len(logs)-1].Index

	big := make([]AuditInput, 1000)
	for i := range big {
		big[i] = benchAuditInput(i)
	}
	h.index++
	data := mustEncode(t, CmdAppendAudit, h.header(sysP), &AppendAuditCmd{Entries: big})
	if len(data) <= maxGroupBytes {
		t.Fatalf("the large batch is %d bytes, not over %d", len(data), maxGroupBytes)
	}
	h.f.ApplyBatch([]*raft.Log{cmdLog(h.index, data)})
	if h.f.pending.Load() {
		t.Fatalf("a batch over %d bytes was left open", maxGroupBytes)
	}

	for i := range maxOpenLogs {
		h.index++
		h.f.ApplyBatch([]*raft.Log{cmdLog(h.index, mustEncode(t, CmdNoop, h.header(sysP), nil))})
		if open := h.f.pending.Load(); open != (i < maxOpenLogs-1) {
			t.Fatalf("after %d noops the transaction is open: %v", i+1, open)
		}
	}
}

func TestNearMapEnd(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		size int64
		want bool
	}{
		{0, false}, {700 * mb, false}, {767 * mb, false}, {768 * mb, true}, {1024 * mb, true},
		{1025 * mb, false}, {1791 * mb, false}, {1792 * mb, true}, {2048 * mb, true},
	} {
		if got := nearMapEnd(c.size); got != c.want {
			t.Errorf("nearMapEnd(%d MiB) = %v, want %v", c.size/mb, got, c.want)
		}
	}
}

func TestGroupable(t *testing.T) {
	hdr := Header{Principal: sysP, Time: baseTime.UnixNano()}
	audit := mustEncode(t, CmdAppendAudit, hdr, &AppendAuditCmd{Entries: []AuditInput{benchAuditInput(1)}})
	noop := mustEncode(t, CmdNoop, hdr, nil)
	tenant := mustEncode(t, CmdCreateTenant, hdr, &CreateTenantCmd{ID: "x"})
	v1 := encodeV1(t, Command{Type: CmdAppendAudit, Header: hdr, Payload: []byte(`{"entries":[]}`)})
	conf := &raft.Log{Index: 9, Type: raft.LogConfiguration, Data: bytes.Repeat([]byte{0}, maxGroupBytes+1)}
	for _, c := range []struct {
		name string
		logs []*raft.Log
		want bool
	}{
		{"audit and noop", []*raft.Log{cmdLog(1, audit), cmdLog(2, noop)}, true},
		{"a configuration entry is not applied", []*raft.Log{cmdLog(1, audit), conf}, true},
		{"another command", []*raft.Log{cmdLog(1, audit), cmdLog(2, tenant)}, false},
		{"JSON envelope", []*raft.Log{cmdLog(1, v1)}, false},
		{"empty entry", []*raft.Log{cmdLog(1, nil)}, false},
		{"type cut short", []*raft.Log{cmdLog(1, []byte{encodingV2, 0x80})}, false},
		{"too large", []*raft.Log{cmdLog(1, append(audit, bytes.Repeat([]byte{0}, maxGroupBytes)...))}, false},
	} {
		if got := groupable(c.logs); got != c.want {
			t.Errorf("%s: groupable = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPanicAfterOpenBatches: a batch that panics while earlier batches wait
// in the open transaction leaves exactly those batches applied.
func TestPanicAfterOpenBatches(t *testing.T) {
	want, got := seeded(t), seeded(t)
	batches := groupLogs(t, got.index+1, 5)
	for _, logs := range batches[:5] {
		want.f.ApplyBatch(logs)
		got.f.ApplyBatch(logs)
	}
	if !got.f.pending.Load() {
		t.Fatal("the last batches were not left open: the test exercises nothing")
	}
	last := batches[4][len(batches[4])-1].Index
	good := mustEncode(t, CmdAppendAudit, got.header(sysP), &AppendAuditCmd{Entries: []AuditInput{benchAuditInput(7)}})
	v := mustPanic(t, "a truncated entry", func() { got.f.ApplyBatch([]*raft.Log{cmdLog(last+1, good), cmdLog(last+2, good[:len(good)-3])}) })
	if s := toString(v); len(s) < 4 || s[:4] != "fsm:" {
		t.Errorf("panic value %q, want an fsm: message", s)
	}
	if got.f.AppliedIndex() != last {
		t.Fatalf("applied index %d after the panic, want %d", got.f.AppliedIndex(), last)
	}
	if g, w := dumpState(t, got.f), dumpState(t, want.f); g != w {
		t.Fatalf("state after the panic differs from the batches before it:\n%s", diffLines(w, g))
	}
	// The FSM goes on.
	next := []*raft.Log{cmdLog(last+1, good)}
	want.f.ApplyBatch(next)
	got.f.ApplyBatch(next)
	if !bytes.Equal(snapshotBytes(t, got.f), snapshotBytes(t, want.f)) {
		t.Fatal("the FSM diverged after recovering from the panic")
	}
}

// TestRestoreDiscardsOpenTransaction: a restore replaces what the open
// transaction holds.
func TestRestoreDiscardsOpenTransaction(t *testing.T) {
	src := populated(t)
	snap := persist(t, src.f)
	h := seeded(t)
	h.f.ApplyBatch(groupLogs(t, h.index+1, 1)[0])
	if !h.f.pending.Load() {
		t.Fatal("the batch was not left open")
	}
	if err := restore(h.f, snap); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if g, w := dumpState(t, h.f), dumpState(t, src.f); g != w {
		t.Fatalf("restored state differs from the snapshot's:\n%s", diffLines(w, g))
	}
	if h.f.AppliedIndex() != src.f.AppliedIndex() {
		t.Fatalf("applied index %d after restore, want %d", h.f.AppliedIndex(), src.f.AppliedIndex())
	}
}

// TestReadsSeeAppliedWhileGrouping: concurrent readers always see at least
// what was applied before their read began (run with -race).
func TestReadsSeeAppliedWhileGrouping(t *testing.T) {
	h := seeded(t)
	batches := groupLogs(t, h.index+1, 300)
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				want := h.f.AppliedIndex()
				var got uint64
				if err := h.f.View(func(r *Reader) error { got = r.AppliedIndex(); return nil }); err != nil {
					errs <- err
					return
				}
				if got < want {
					errs <- fmt.Errorf("read saw applied index %d after %d was applied", got, want)
					return
				}
			}
		}()
	}
	for _, logs := range batches {
		h.f.ApplyBatch(logs)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	verifyAll(t, h.f)
}
