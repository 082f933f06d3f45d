package threat

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/hashicorp/raft"
)

// benchStream is a mixed audit stream: 10 tenants, 1,000 users and 100 keys
// acting through the day, reads, logins and the odd failure — what the
// detectors see in steady state.
func benchStream(n int) []*fsm.AuditEntry {
	out := make([]*fsm.AuditEntry, n)
	seq := map[string]uint64{}
	actions := []fsm.Action{fsm.ActionUserUpdated, "data_read", fsm.ActionLoginSucceeded, "query", fsm.ActionAPIKeyCreated,
		"data_read", fsm.ActionPermissionDenied, "schema_updated", fsm.ActionLoginFailed, "data_read"}
	for i := range out {
		tenant := "t" + strconv.Itoa(i%10)
		seq[tenant]++
		u := i % 1000
		a := actions[i%len(actions)]
		e := &fsm.AuditEntry{Tenant: tenant, Seq: seq[tenant], Time: t0.Add(time.Duration(i) * 7 * time.Millisecond),
			Action: a, Outcome: fsm.OutcomeSuccess, IP: fmt.Sprintf("10.0.%d.%d", u/250, u%250),
			Actor: fsm.Actor{Kind: fsm.PrincipalUser, ID: fmt.Sprintf("%032x", u), Name: "user" + strconv.Itoa(u), Role: "developer"}}
		switch a {
		case fsm.ActionLoginFailed, fsm.ActionPermissionDenied:
			e.Outcome = fsm.OutcomeFailure
		case fsm.ActionAPIKeyCreated:
			e.Metadata = map[string]string{"role": "readonly"}
		case "data_read":
			if i%3 == 0 {
				e.Actor = fsm.Actor{Kind: fsm.PrincipalAPIKey, ID: fmt.Sprintf("%032x", 5000+u%100), Name: "svc"}
				e.Metadata = map[string]string{"count": "40"}
			}
		}
		out[i] = e
	}
	return out
}

// BenchmarkEngineProcess: audit entries analysed per second by the detector
// pipeline (every detector, on one goroutine).
func BenchmarkEngineProcess(b *testing.B) {
	stream := benchStream(200_000)
	e, err := NewEngine(Config{})
	if err != nil {
		b.Fatal(err)
	}
	for _, ent := range stream[:50_000] { // warm: baselines and windows exist
		e.Process(ent)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		e.Process(stream[i%len(stream)])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/entry")
}

// benchNode applies to an FSM directly: a one-replica raft.
type benchNode struct {
	mu    sync.Mutex
	f     *fsm.FSM
	index uint64
}

func (n *benchNode) IsLeader() bool                { return true }
func (n *benchNode) Barrier(context.Context) error { return nil }
func (n *benchNode) Apply(_ context.Context, c fsm.Command) (*fsm.Result, error) {
	b, err := c.Encode()
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.index++
	return n.f.Apply(&raft.Log{Index: n.index, Type: raft.LogCommand, Data: b}).(*fsm.Result), nil
}

// BenchmarkRunnerPipeline: entries per second through the leader's whole
// pipeline — read from the state store, decode, analyse, checkpoint — for
// a log of audit entries committed by group commit (batches of 10,000).
func BenchmarkRunnerPipeline(b *testing.B) {
	f := openFSM(b)
	node := &benchNode{f: f}
	stream := benchStream(200_000)
	sys := fsm.Principal{Kind: fsm.PrincipalSystem, ID: "edge"}
	for i := 0; i < len(stream); i += 10_000 {
		var batch []fsm.AuditInput
		for _, e := range stream[i : i+10_000] {
			batch = append(batch, fsm.AuditInput{Tenant: e.Tenant, Time: e.Time, Action: e.Action, Actor: e.Actor,
				Resource: e.Resource, Outcome: e.Outcome, IP: e.IP, Metadata: e.Metadata})
		}
		c, _ := fsm.NewCommand(fsm.CmdAppendAudit, fsm.Header{Principal: sys, Time: t0.UnixNano()}, &fsm.AppendAuditCmd{Entries: batch})
		if res, err := node.Apply(context.Background(), c); err != nil || res.Err != nil {
			b.Fatalf("append: %v %v", err, res.Err)
		}
	}
	b.ResetTimer()
	cpu0 := processCPU()
	for i := 0; i < b.N; i++ {
		r, err := NewRunner(RunnerConfig{FSM: f, Node: node, NodeID: "bench", Now: func() time.Time { return t0.Add(time.Hour) },
			Logger: slog.New(slog.DiscardHandler), WarmWindow: time.Nanosecond})
		if err != nil {
			b.Fatal(err)
		}
		eng, _ := NewEngine(Config{})
		st := newTermState(eng)
		for t := 0; t < 10; t++ {
			if err := r.analyse(context.Background(), st, "t"+strconv.Itoa(t)); err != nil {
				b.Fatal(err)
			}
		}
		if err := r.checkpoint(context.Background(), st, true); err != nil {
			b.Fatal(err)
		}
		if r.Analysed() != uint64(len(stream)) {
			b.Fatalf("analysed %d of %d", r.Analysed(), len(stream))
		}
	}
	b.ReportMetric(float64(b.N*len(stream))/b.Elapsed().Seconds(), "entries/s")
	// CPU time per entry (all cores): what the machine's other load does not change.
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N*len(stream)), "cpu-ns/entry")
}
