package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/fsm"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// BenchmarkRaftWrites measures acknowledged writes per second on a 3-server
// cluster over loopback TCP with raft-boltdb on disk, at several proposer
// concurrencies, for two clusters side by side:
//
//   - ours: cluster.Node with the real state machine; every write is an
//     fsm.CmdAppendAudit command with one audit entry of about 200 bytes
//     (built and encoded per write, as the API does), applied into bbolt with
//     its hash chain on every server;
//   - bare: hashicorp/raft with the same raft settings, raft-boltdb and TCP
//     transport, a no-op FSM and 200-byte commands;
//   - noop (for the breakdown): the ours cluster proposing fsm.CmdNoop, which
//     costs the envelope's decode and the bolt transaction per batch but
//     no state change.
//
// Each sub-benchmark runs b.N writes on each series, interleaved in twelve
// rounds so that a noisy neighbour hurts them alike, and reports writes/s
// and process CPU per write for each, and ratio = ours/bare (goal ≥ 0.9,
// DESIGN.md §9). ns/op covers all series together and means nothing here.
//
//	go test -run '^$' -bench BenchmarkRaftWrites -benchtime 5s ./test/
func BenchmarkRaftWrites(b *testing.B) {
	// Each cluster starts under a pprof label, which every goroutine it
	// spawns inherits, so that a -cpuprofile splits by series:
	// go tool pprof -tagfocus series=ours …
	var ours *oursCluster
	var bare *bareCluster
	pprof.Do(context.Background(), pprof.Labels("series", "ours"), func(context.Context) { ours = newOursCluster(b) })
	pprof.Do(context.Background(), pprof.Labels("series", "bare"), func(context.Context) { bare = newBareCluster(b) })
	cmdSize := len(mustEncode(b, auditCommand(0)))
	series := []struct {
		name  string
		apply func(i int) error
	}{
		{"bare", bare.apply},
		{"ours", ours.apply},
		{"noop", ours.applyNoop},
	}
	if only := os.Getenv("BENCH_SERIES"); only != "" { // e.g. "ours", for a profile of one series
		kept := series[:0]
		for _, s := range series {
			if strings.Contains(","+only+",", ","+s.name+",") {
				kept = append(kept, s)
			}
		}
		series = kept
	}
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			oursChanges, bareChanges := ours.leader.changes.Load(), bare.leader.changes.Load()
			wall := make([]time.Duration, len(series))
			cpu := make([]time.Duration, len(series))
			const rounds = 12
			for r := 0; r < rounds; r++ {
				n := b.N / rounds
				if r == rounds-1 {
					n = b.N - n*(rounds-1)
				}
				if n == 0 {
					continue
				}
				for i, s := range series {
					w, c := runWrites(b, n, conc, s.apply)
					wall[i], cpu[i] = wall[i]+w, cpu[i]+c
				}
			}
			rate := func(i int) float64 { return float64(b.N) / wall[i].Seconds() }
			for i, s := range series {
				b.ReportMetric(rate(i), s.name+"_writes/s")
				b.ReportMetric(float64(cpu[i].Microseconds())/float64(b.N), s.name+"_cpu_µs/write")
			}
			if len(series) == 3 {
				b.ReportMetric(rate(1)/rate(0), "ratio")
			}
			b.ReportMetric(float64(ours.leader.changes.Load()-oursChanges), "ours_leader_changes")
			b.ReportMetric(float64(bare.leader.changes.Load()-bareChanges), "bare_leader_changes")
			b.ReportMetric(float64(cmdSize), "ours_cmd_bytes")
		})
	}
}

// runWrites issues n writes from conc goroutines and returns the wall time
// and the CPU time (user and system) the process spent meanwhile.
func runWrites(b *testing.B, n, conc int, apply func(i int) error) (wall, cpu time.Duration) {
	cpu0 := processCPU(b)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	start := time.Now()
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) || failed.Load() != nil {
					return
				}
				if err := apply(int(i)); err != nil {
					failed.Store(&err)
					return
				}
			}
		}()
	}
	wg.Wait()
	wall = time.Since(start)
	if e := failed.Load(); e != nil {
		b.Fatalf("write failed: %v", *e)
	}
	return wall, processCPU(b) - cpu0
}

// processCPU is the CPU time this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRaftConfig is the raft configuration cluster.New builds, for the bare
// cluster.
func benchRaftConfig(id string) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.HeartbeatTimeout = cluster.DefaultHeartbeatTimeout
	rc.ElectionTimeout = cluster.DefaultElectionTimeout
	rc.LeaderLeaseTimeout = cluster.DefaultLeaderLeaseTimeout
	rc.CommitTimeout = cluster.DefaultCommitTimeout
	rc.SnapshotThreshold = 8192
	rc.SnapshotInterval = 30 * time.Second
	rc.TrailingLogs = 10240
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 512
	rc.Logger = hclog.NewNullLogger()
	return rc
}

var discardLog = slog.New(slog.DiscardHandler)

// auditCommand is one write of "ours": an audit entry of about 200 bytes.
func auditCommand(i int) fsm.Command {
	now := time.Now()
	c, err := fsm.NewCommand(fsm.CmdAppendAudit,
		fsm.Header{Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: "bench"}, Time: now.UnixNano()},
		&fsm.AppendAuditCmd{Entries: []fsm.AuditInput{{
			Tenant: "bench", Time: now, Action: fsm.ActionAPIKeyUsed,
			Actor:    fsm.Actor{Kind: fsm.PrincipalAPIKey, ID: "k_7f3a9c2e", Name: "ci"},
			Resource: "/v1/orders", Outcome: fsm.OutcomeSuccess, IP: "203.0.113.7",
			RequestID: fmt.Sprintf("%024x", i),
		}}})
	if err != nil {
		panic(err)
	}
	return c
}

func mustEncode(b testing.TB, c fsm.Command) []byte {
	enc, err := c.Encode()
	if err != nil {
		b.Fatal(err)
	}
	return enc
}

// leaderRef tracks a cluster's leader during a benchmark. On a shared,
// overloaded machine a leader can miss its lease and step down; the
// writer that notices finds the new leader, the others wait for it, and the
// change is counted and reported (ours_/bare_leader_changes) instead of
// failing the run.
type leaderRef[T comparable] struct {
	mu      sync.Mutex
	cur     atomic.Pointer[T]
	changes atomic.Int64
	members []T
	leads   func(T) bool
}

func (l *leaderRef[T]) get() T { return *l.cur.Load() }

func (l *leaderRef[T]) set(v T) { l.cur.Store(&v) }

// replace finds a new leader after old lost leadership.
func (l *leaderRef[T]) replace(old T) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.get() != old {
		return nil // another writer already did
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range l.members {
			if l.leads(m) {
				l.set(m)
				l.changes.Add(1)
				return nil
			}
		}
		time.Sleep(5 * time.Millisecond) // polling for an election's outcome
	}
	return errors.New("no leader elected within 30 s")
}

// withLeader runs write on the current leader, following leadership changes
// (a write that failed with them is retried, up to three times).
func withLeader[T comparable](l *leaderRef[T], lost func(error) bool, write func(T) error) error {
	for attempt := 0; ; attempt++ {
		cur := l.get()
		err := write(cur)
		if err == nil || !lost(err) || attempt == 3 {
			return err
		}
		if err := l.replace(cur); err != nil {
			return err
		}
	}
}

type oursCluster struct {
	nodes  []*cluster.Node
	leader leaderRef[*cluster.Node]
}

func newOursCluster(b *testing.B) *oursCluster {
	b.Helper()
	c := &oursCluster{}
	for i := 1; i <= 3; i++ {
		dir := b.TempDir()
		f, err := fsm.Open(filepath.Join(dir, "fsm"), fsm.Options{Logger: discardLog})
		if err != nil {
			b.Fatal(err)
		}
		n, err := cluster.New(cluster.Config{NodeID: fmt.Sprintf("n%d", i), DataDir: dir,
			RaftBind: "127.0.0.1:0", Bootstrap: i == 1, Logger: discardLog}, f)
		if err != nil {
			f.Close()
			b.Fatal(err)
		}
		b.Cleanup(func() {
			n.Shutdown()
			f.Close()
		})
		c.nodes = append(c.nodes, n)
	}
	c.leader.members, c.leader.leads = c.nodes, (*cluster.Node).IsLeader
	c.leader.set(c.nodes[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor(b, 30*time.Second, "n1 to lead", c.nodes[0].IsLeader)
	for _, n := range c.nodes[1:] {
		if err := c.nodes[0].AddVoter(n.ID(), n.RaftAddr()); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 200; i++ { // warm up: connections, pipelines, bolt pages
		if err := c.apply(i); err != nil {
			b.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		if err := n.WaitForApplied(ctx, c.nodes[0].AppliedIndex()); err != nil {
			b.Fatalf("%s catching up: %v", n.ID(), err)
		}
	}
	return c
}

// applyNoop proposes a state-machine no-op.
func (c *oursCluster) applyNoop(i int) error {
	cmd, err := fsm.NewCommand(fsm.CmdNoop, fsm.Header{Time: time.Now().UnixNano(),
		Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: "bench"}}, nil)
	if err != nil {
		return err
	}
	return c.propose(cmd)
}

func (c *oursCluster) propose(cmd fsm.Command) error {
	return withLeader(&c.leader, func(err error) bool { return errors.Is(err, cluster.ErrNotLeader) },
		func(n *cluster.Node) error {
			res, err := n.Apply(context.Background(), cmd)
			if err != nil {
				return err
			}
			return res.Error()
		})
}

func (c *oursCluster) apply(i int) error {
	return c.propose(auditCommand(i))
}

type bareCluster struct {
	rafts  []*raft.Raft
	leader leaderRef[*raft.Raft]
	cmd    []byte
}

// nopFSM is the bare cluster's state machine: it does nothing.
type nopFSM struct{}

func (nopFSM) Apply(*raft.Log) any                 { return nil }
func (nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnapshot{}, nil }
func (nopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type nopSnapshot struct{}

func (nopSnapshot) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnapshot) Release()                          {}

func newBareCluster(b *testing.B) *bareCluster {
	b.Helper()
	c := &bareCluster{cmd: make([]byte, 200)}
	for i := range c.cmd {
		c.cmd[i] = byte('a' + i%26)
	}
	var servers []raft.Server
	for i := 1; i <= 3; i++ {
		dir := b.TempDir()
		store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
		if err != nil {
			b.Fatal(err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
		if err != nil {
			b.Fatal(err)
		}
		tr, err := raft.NewTCPTransportWithConfig("127.0.0.1:0", nil,
			&raft.NetworkTransportConfig{MaxPool: 8, Timeout: 10 * time.Second, Logger: hclog.NewNullLogger()})
		if err != nil {
			b.Fatal(err)
		}
		id := fmt.Sprintf("bare%d", i)
		// The same log cache as cluster.New, so that ratio measures only
		// what our layers add; BARE_STOCK=1 leaves it out (hashicorp/raft
		// and raft-boltdb as they come) for a product-versus-stock figure.
		var logs raft.LogStore = store
		if os.Getenv("BARE_STOCK") == "" {
			if logs, err = raft.NewLogCache(cluster.LogCacheSize, store); err != nil {
				b.Fatal(err)
			}
		}
		r, err := raft.NewRaft(benchRaftConfig(id), nopFSM{}, logs, store, snaps, tr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			_ = r.Shutdown().Error()
			tr.Close()
			store.Close()
		})
		c.rafts = append(c.rafts, r)
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: tr.LocalAddr()})
	}
	// bare1 bootstraps alone and adds the others, as ours does.
	if err := c.rafts[0].BootstrapCluster(raft.Configuration{Servers: servers[:1]}).Error(); err != nil {
		b.Fatal(err)
	}
	c.leader.members = c.rafts
	c.leader.leads = func(r *raft.Raft) bool { return r.State() == raft.Leader }
	c.leader.set(c.rafts[0])
	waitFor(b, 30*time.Second, "bare1 to lead", func() bool { return c.rafts[0].State() == raft.Leader })
	for _, s := range servers[1:] {
		if err := c.rafts[0].AddVoter(s.ID, s.Address, 0, 10*time.Second).Error(); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 200; i++ {
		if err := c.apply(i); err != nil {
			b.Fatal(err)
		}
	}
	return c
}

func (c *bareCluster) apply(int) error {
	return withLeader(&c.leader, func(err error) bool {
		return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost)
	}, func(r *raft.Raft) error { return r.Apply(c.cmd, 10*time.Second).Error() })
}
