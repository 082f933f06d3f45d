package threat

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/allsource/guard/fsm"
)

// handoffRig is an FSM whose OnApply feeds a runner, and the runner's term
// state, driven by hand (no goroutines).
type handoffRig struct {
	t    *testing.T
	f    *fsm.FSM
	node *benchNode
	r    *Runner
	st   *termState
}

func newHandoffRig(t *testing.T) *handoffRig {
	h := &handoffRig{t: t}
	f, err := fsm.Open(t.TempDir(), fsm.Options{Logger: slog.New(slog.DiscardHandler), OnApply: func(i uint64, ch []fsm.Change) {
		if h.r != nil {
			h.r.OnApply(i, ch)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	h.f, h.node = f, &benchNode{f: f}
	h.r, err = NewRunner(RunnerConfig{FSM: f, Node: h.node, NodeID: "n1", Now: func() time.Time { return t0 },
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	eng, _ := NewEngine(Config{})
	h.st = newTermState(eng)
	h.r.setActive(true)
	return h
}

// fail appends n failed logins for user u from ip, a second apart from at.
func (h *handoffRig) fail(u, ip string, n int, at time.Time) {
	var ins []fsm.AuditInput
	for i := 0; i < n; i++ {
		ins = append(ins, fsm.AuditInput{Tenant: "", Time: at.Add(time.Duration(i) * time.Second), Action: fsm.ActionLoginFailed,
			Actor: fsm.Actor{Kind: fsm.PrincipalUser, Name: u}, Outcome: fsm.OutcomeFailure, IP: ip})
	}
	c, _ := fsm.NewCommand(fsm.CmdAppendAudit, fsm.Header{Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: "e"},
		Time: at.UnixNano()}, &fsm.AppendAuditCmd{Entries: ins})
	if res, err := h.node.Apply(context.Background(), c); err != nil || res.Err != nil {
		h.t.Fatalf("append: %v %v", err, res.Err)
	}
}

// TestRunnerHandoffAndGaps: entries handed over by OnApply are analysed
// without the store; a gap in them (the bound dropped some) is read from the
// store, and the detections are the same as from the store alone.
func TestRunnerHandoffAndGaps(t *testing.T) {
	h := newHandoffRig(t)
	h.fail("ann", "192.0.2.1", 3, t0)
	if n := len(h.r.queued[""]); n != 3 {
		t.Fatalf("queued %d entries, want 3", n)
	}
	if err := h.r.analyse(context.Background(), h.st, ""); err != nil {
		t.Fatal(err)
	}
	if h.st.cursor[""] != 3 || h.r.nQueued != 0 || h.st.eng.entries != 3 {
		t.Fatalf("cursor %d queued %d analysed %d", h.st.cursor[""], h.r.nQueued, h.st.eng.entries)
	}
	// Four more failures, of which the first two were not handed over (as
	// when the bound is reached): they come from the store, in order, and
	// the fifth failure overall raises the brute force, once.
	h.fail("ann", "192.0.2.1", 4, t0.Add(10*time.Second))
	h.r.mu.Lock()
	h.r.queued[""] = h.r.queued[""][2:]
	h.r.nQueued -= 2
	h.r.mu.Unlock()
	if err := h.r.analyse(context.Background(), h.st, ""); err != nil {
		t.Fatal(err)
	}
	if h.st.cursor[""] < 7 || h.st.eng.counts[fsm.AnomalyBruteForce] != 1 {
		t.Fatalf("cursor %d, brute force raised %d times", h.st.cursor[""], h.st.eng.counts[fsm.AnomalyBruteForce])
	}
	var as []*fsm.Anomaly
	_ = h.f.View(func(rd *fsm.Reader) error { as, _ = rd.Anomalies(fsm.AnomalyQuery{Tenant: ""}); return nil })
	if len(as) != 1 || as[0].TriggerSeq != 5 {
		t.Fatalf("recorded anomalies = %+v, want one raised by entry 5", as)
	}
}

// BenchmarkRunnerHandoff: the leader's analysis of entries handed over by
// the FSM's apply hook (the steady state: no decoding).
func BenchmarkRunnerHandoff(b *testing.B) {
	f, err := fsm.Open(b.TempDir(), fsm.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	stream := benchStream(200_000)
	var changes [][]fsm.Change
	for i := 0; i < len(stream); i += 10_000 {
		var ch []fsm.Change
		for _, e := range stream[i : i+10_000] {
			ch = append(ch, fsm.Change{Kind: fsm.ChangeAudit, Tenant: e.Tenant, Audit: e})
		}
		changes = append(changes, ch)
	}
	node := &benchNode{f: f}
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		r, _ := NewRunner(RunnerConfig{FSM: f, Node: node, NodeID: "bench", Logger: slog.New(slog.DiscardHandler)})
		eng, _ := NewEngine(Config{})
		st := newTermState(eng)
		r.setActive(true)
		for _, ch := range changes {
			r.OnApply(0, ch)
			for _, t := range r.takeDirty() {
				if err := r.analyse(context.Background(), st, t); err != nil {
					b.Fatal(err)
				}
			}
		}
		if r.Analysed() != uint64(len(stream)) {
			b.Fatalf("analysed %d of %d", r.Analysed(), len(stream))
		}
	}
	b.ReportMetric(float64(b.N*len(stream))/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N*len(stream)), "cpu-ns/entry")
}

// TestHandedOverEntriesAreDetached: the entries the FSM hands over share
// their batch's text; the detectors keep strings of them (an address in a
// window, a username in a map) for hours, so the runner detaches a page of
// them before the detectors see it. A 20-byte address must not keep a
// batch's text (here 64 KiB) alive.
func TestHandedOverEntriesAreDetached(t *testing.T) {
	batchText := strings.Repeat("x", 64<<10) + "acme203.0.113.9alice"
	n := len(batchText)
	q := []*fsm.AuditEntry{{Tenant: batchText[n-20 : n-16], IP: batchText[n-16 : n-5], Seq: 1,
		Action: fsm.ActionLoginFailed, Actor: fsm.Actor{Kind: fsm.PrincipalUser, Name: batchText[n-5:]}}}
	var r Runner
	page, rest, err := r.nextPage("acme", 0, q)
	if err != nil || len(page) != 1 || len(rest) != 0 {
		t.Fatalf("nextPage = %d entries, %d left, %v", len(page), len(rest), err)
	}
	e := page[0]
	if e.Tenant != "acme" || e.IP != "203.0.113.9" || e.Actor.Name != "alice" {
		t.Fatalf("page entry = %+v", e)
	}
	lo := uintptr(unsafe.Pointer(unsafe.StringData(batchText)))
	for _, s := range []string{e.Tenant, e.IP, e.Actor.Name} {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(s))); p >= lo && p < lo+uintptr(n) {
			t.Fatalf("%q still points into the batch's text", s)
		}
	}
}
