package threat

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strconv"
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
	f := openFSM(b)
	stream := benchStream(200_000)
	changes := auditChanges(stream, 10_000)
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		handOver(b, f, changes, len(stream))
	}
	b.ReportMetric(float64(b.N*len(stream))/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N*len(stream)), "cpu-ns/entry")
}

// TestDetectorsKeepNoBatchText: the entries the FSM hands over share their
// raft batch's text (one string for a whole batch, up to hundreds of KB).
// The detectors keep strings of them for hours (an address in a window, a
// username in a map, an actor's addresses and actions), and the runner keeps
// each tenant's last hash: each must be a copy, or an 11-byte address keeps a
// batch's text alive. Here every string of the handed-over entries lies in
// one text; after the runner has analysed them, no string the runner or the
// engine keeps may point into it.
func TestDetectorsKeepNoBatchText(t *testing.T) {
	f := openFSM(t)
	stream := benchStream(20_000)
	var text strings.Builder
	text.Grow(len(stream) * 512)
	in := func(s string) string { // s as a substring of text
		n := text.Len()
		text.WriteString(s)
		return text.String()[n:]
	}
	entries := make([]*fsm.AuditEntry, len(stream))
	for i, e := range stream {
		c := *e
		c.Resource = "/v1/orders/" + strconv.Itoa(i%50)
		c.ID, c.Hash, c.PrevHash = fmt.Sprintf("%016x-0001", i), fmt.Sprintf("%064x", i), fmt.Sprintf("%064x", i-1)
		for _, p := range []*string{&c.ID, &c.Tenant, (*string)(&c.Action), (*string)(&c.Actor.Kind), &c.Actor.ID, &c.Actor.Name,
			&c.Actor.Role, &c.Resource, (*string)(&c.Outcome), &c.IP, &c.Hash, &c.PrevHash} {
			*p = in(*p)
		}
		if e.Metadata != nil {
			c.Metadata = map[string]string{}
			for k, v := range e.Metadata {
				c.Metadata[in(k)] = in(v)
			}
		}
		entries[i] = &c
	}
	all := text.String()
	lo := uintptr(unsafe.Pointer(unsafe.StringData(all)))
	hi := lo + uintptr(len(all))

	st := handOver(t, f, auditChanges(entries, 1000), len(entries))
	strs := 0
	walkStrings(reflect.ValueOf(st), map[uintptr]bool{}, "st", func(path, s string) {
		strs++
		if p := uintptr(unsafe.Pointer(unsafe.StringData(s))); len(s) > 0 && p >= lo && p < hi {
			t.Fatalf("%s = %q points into the handed-over batch's text", path, s)
		}
	})
	if strs < 1000 { // the walk must have reached the detectors' state
		t.Fatalf("the walk found only %d strings", strs)
	}
}

// openFSM opens a state machine in a fresh directory, closed when the test
// ends.
func openFSM(tb testing.TB) *fsm.FSM {
	f, err := fsm.Open(tb.TempDir(), fsm.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}

// auditChanges groups entries into the apply hook's changes, per entries
// each.
func auditChanges(entries []*fsm.AuditEntry, per int) [][]fsm.Change {
	var out [][]fsm.Change
	for i := 0; i < len(entries); i += per {
		var ch []fsm.Change
		for _, e := range entries[i:min(i+per, len(entries))] {
			ch = append(ch, fsm.Change{Kind: fsm.ChangeAudit, Tenant: e.Tenant, Audit: e})
		}
		out = append(out, ch)
	}
	return out
}

// handOver runs a fresh runner and engine over changes as the FSM's apply
// hook hands them over, checks that all total entries were analysed, and
// returns what the analysis keeps.
func handOver(tb testing.TB, f *fsm.FSM, changes [][]fsm.Change, total int) *termState {
	r, err := NewRunner(RunnerConfig{FSM: f, Node: &benchNode{f: f}, NodeID: "t", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	eng, _ := NewEngine(Config{})
	st := newTermState(eng)
	r.setActive(true)
	for _, ch := range changes {
		r.OnApply(0, ch)
		for _, tn := range r.takeDirty() {
			if err := r.analyse(context.Background(), st, tn); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if r.Analysed() != uint64(total) {
		tb.Fatalf("analysed %d of %d", r.Analysed(), total)
	}
	return st
}

// walkStrings calls fn for every string reachable from v (unexported fields
// too), following pointers once each.
func walkStrings(v reflect.Value, seen map[uintptr]bool, path string, fn func(path, s string)) {
	switch v.Kind() {
	case reflect.String:
		fn(path, v.String())
	case reflect.Pointer:
		if v.IsNil() || seen[v.Pointer()] {
			return
		}
		seen[v.Pointer()] = true
		if len(path) > 160 { // a linked list: keep the path readable
			path = path[:80] + "…" + path[len(path)-40:]
		}
		walkStrings(v.Elem(), seen, path, fn)
	case reflect.Interface:
		if !v.IsNil() {
			walkStrings(v.Elem(), seen, path, fn)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			walkStrings(v.Field(i), seen, path+"."+v.Type().Field(i).Name, fn)
		}
	case reflect.Slice, reflect.Array:
		switch v.Type().Elem().Kind() {
		case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint,
			reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			return
		}
		for i := range v.Len() {
			walkStrings(v.Index(i), seen, fmt.Sprintf("%s[%d]", path, i), fn)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			walkStrings(it.Key(), seen, path+"{key}", fn)
			walkStrings(it.Value(), seen, path+"{"+fmt.Sprint(it.Key())+"}", fn)
		}
	}
}
