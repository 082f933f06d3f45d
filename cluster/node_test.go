package cluster

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
)

// scale stretches timeouts on CI (shared, noisy machines).
func scale(d time.Duration) time.Duration {
	if os.Getenv("CI") != "" {
		return 4 * d
	}
	return d
}

// waitFor polls cond until it holds or the (scaled) timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(scale(timeout))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", scale(timeout), what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), scale(d))
	t.Cleanup(cancel)
	return ctx
}

type testNode struct {
	*Node
	fsm *fsm.FSM
}

// newTestNode starts a node on a loopback port with its own data dir. mut
// may adjust the config (gossip, promotion).
func newTestNode(t *testing.T, id string, bootstrap bool, mut func(*Config)) *testNode {
	t.Helper()
	cfg := Config{NodeID: id, DataDir: t.TempDir(), RaftBind: "127.0.0.1:0", Bootstrap: bootstrap,
		Logger: slog.New(slog.DiscardHandler)}
	if mut != nil {
		mut(&cfg)
	}
	return startTestNode(t, cfg)
}

// startTestNode opens the state machine in cfg.DataDir and starts a node on
// it, shut down when the test ends.
func startTestNode(t *testing.T, cfg Config) *testNode {
	t.Helper()
	f, err := fsm.Open(filepath.Join(cfg.DataDir, "fsm"), fsm.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(cfg, f)
	if err != nil {
		f.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Shutdown()
		f.Close()
	})
	return &testNode{Node: n, fsm: f}
}

func noopCommand(t *testing.T) fsm.Command {
	t.Helper()
	c, err := fsm.NewCommand(fsm.CmdNoop, fsm.Header{Time: time.Now().UnixNano(),
		Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: "test"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// apply proposes a no-op on n and returns the index it was applied at.
func apply(t *testing.T, n *testNode) uint64 {
	t.Helper()
	res, err := n.Apply(ctxFor(t, 10*time.Second), noopCommand(t))
	if err != nil {
		t.Fatalf("apply on %s: %v", n.ID(), err)
	}
	return res.Index
}

// threeNodes bootstraps n1 and adds n2 and n3 as voters.
func threeNodes(t *testing.T) []*testNode { return cluster3(t, nil) }

// cluster3 is threeNodes with each node's config adjusted by mut.
func cluster3(t *testing.T, mut func(*Config)) []*testNode {
	t.Helper()
	nodes := []*testNode{newTestNode(t, "n1", true, mut), newTestNode(t, "n2", false, mut), newTestNode(t, "n3", false, mut)}
	if _, err := nodes[0].WaitForLeader(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[1:] {
		if err := nodes[0].AddVoter(n.ID(), n.RaftAddr()); err != nil {
			t.Fatalf("add voter %s: %v", n.ID(), err)
		}
	}
	for _, n := range nodes {
		if id, err := n.WaitForLeader(ctxFor(t, 10*time.Second)); err != nil || id != "n1" {
			t.Fatalf("%s: leader %q, %v; want n1", n.ID(), id, err)
		}
		waitFor(t, 10*time.Second, n.ID()+" to see three voters", func() bool {
			s, err := n.Servers()
			return err == nil && len(s) == 3 && s[0].Suffrage == "voter" && s[1].Suffrage == "voter" && s[2].Suffrage == "voter"
		})
	}
	return nodes
}

func TestWaitForLeader(t *testing.T) {
	lone := newTestNode(t, "lone", false, nil) // never bootstrapped: no leader, ever
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if id, err := lone.WaitForLeader(ctx); !errors.Is(err, ErrNoLeader) || id != "" {
		t.Fatalf("WaitForLeader without a cluster = %q, %v; want ErrNoLeader", id, err)
	}

	n := newTestNode(t, "n1", true, nil)
	id, err := n.WaitForLeader(ctxFor(t, 10*time.Second))
	if err != nil || id != "n1" {
		t.Fatalf("WaitForLeader = %q, %v; want n1", id, err)
	}
	waitFor(t, 5*time.Second, "n1 to be leader", n.IsLeader)
	if lid, addr := n.Leader(); lid != "n1" || addr != n.RaftAddr() {
		t.Fatalf("Leader() = %q %q, want n1 %q", lid, addr, n.RaftAddr())
	}
}

func TestWaitForApplied(t *testing.T) {
	n := newTestNode(t, "n1", true, nil)
	if _, err := n.WaitForLeader(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	idx := apply(t, n)
	if err := n.WaitForApplied(ctxFor(t, time.Second), idx); err != nil {
		t.Fatalf("WaitForApplied(%d) after the write: %v", idx, err)
	}

	// A future index: the wait ends when it is applied, not before.
	done := make(chan error, 1)
	go func() { done <- n.WaitForApplied(ctxFor(t, 10*time.Second), idx+1) }()
	select {
	case err := <-done:
		t.Fatalf("WaitForApplied(%d) returned %v before the entry existed", idx+1, err)
	case <-time.After(50 * time.Millisecond):
	}
	apply(t, n)
	if err := <-done; err != nil {
		t.Fatalf("WaitForApplied(%d): %v", idx+1, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := n.WaitForApplied(ctx, idx+1000); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForApplied far ahead = %v, want DeadlineExceeded", err)
	}

	// Shutdown releases waiters.
	go func() { done <- n.WaitForApplied(context.Background(), idx+1000) }()
	n.Shutdown()
	select {
	case err := <-done:
		if !errors.Is(err, ErrShutdown) {
			t.Fatalf("WaitForApplied across Shutdown = %v, want ErrShutdown", err)
		}
	case <-time.After(scale(5 * time.Second)):
		t.Fatal("WaitForApplied did not return after Shutdown")
	}
}

// TestFollowerErrors: leader-only operations on a follower fail with
// ErrNotLeader (raft's own errors never leak), which the API maps to 503
// not_leader.
func TestFollowerErrors(t *testing.T) {
	nodes := threeNodes(t)
	f := nodes[1]
	ctx := ctxFor(t, 5*time.Second)
	if _, err := f.Apply(ctx, noopCommand(t)); !errors.Is(err, ErrNotLeader) {
		t.Errorf("Apply on a follower = %v, want ErrNotLeader", err)
	}
	if err := f.VerifyRead(ctx); !errors.Is(err, ErrNotLeader) {
		t.Errorf("VerifyRead on a follower = %v, want ErrNotLeader", err)
	}
	if err := f.AddNonvoter("n9", "127.0.0.1:1"); !errors.Is(err, ErrNotLeader) {
		t.Errorf("AddNonvoter on a follower = %v, want ErrNotLeader", err)
	}
	if err := f.RemoveServer("n3"); !errors.Is(err, ErrNotLeader) {
		t.Errorf("RemoveServer on a follower = %v, want ErrNotLeader", err)
	}
	if err := f.TransferLeadership(""); !errors.Is(err, ErrNotLeader) {
		t.Errorf("TransferLeadership on a follower = %v, want ErrNotLeader", err)
	}
	if err := f.Restore(nil, 0); !errors.Is(err, ErrNotLeader) {
		t.Errorf("Restore on a follower = %v, want ErrNotLeader", err)
	}
	if err := nodes[0].RemoveServer("nobody"); !errors.Is(err, ErrUnknownServer) {
		t.Errorf("RemoveServer of an unknown id = %v, want ErrUnknownServer", err)
	}
	if err := nodes[0].TransferLeadership("nobody"); !errors.Is(err, ErrUnknownServer) {
		t.Errorf("TransferLeadership to an unknown id = %v, want ErrUnknownServer", err)
	}
	// The leader itself answers linearizable reads.
	if err := nodes[0].VerifyRead(ctx); err != nil {
		t.Errorf("VerifyRead on the leader: %v", err)
	}
}

func servers(t *testing.T, n *testNode) map[string]Server {
	t.Helper()
	srv, err := n.Servers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Server{}
	for _, s := range srv {
		out[s.ID] = s
	}
	return out
}

// TestAddNonvoterIdempotent: a retried join changes nothing; a known id at a
// new address is replaced; a voter is never demoted by a join retry.
func TestAddNonvoterIdempotent(t *testing.T) {
	l := newTestNode(t, "n1", true, nil)
	n2 := newTestNode(t, "n2", false, nil)
	if _, err := l.WaitForLeader(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "n1 to lead", l.IsLeader)
	if err := l.AddNonvoter("n2", n2.RaftAddr()); err != nil {
		t.Fatal(err)
	}
	last := l.LastIndex()
	for i := 0; i < 3; i++ {
		if err := l.AddNonvoter("n2", n2.RaftAddr()); err != nil {
			t.Fatalf("retried AddNonvoter: %v", err)
		}
	}
	if got := l.LastIndex(); got != last {
		t.Errorf("retried AddNonvoter wrote to the log: last index %d → %d", last, got)
	}
	if s := servers(t, l); len(s) != 2 || s["n2"].Suffrage != "nonvoter" || s["n2"].RaftAddr != n2.RaftAddr() {
		t.Fatalf("configuration after retries: %+v", s)
	}

	// The same id at a new address (a server moved): the entry is replaced.
	if err := l.AddNonvoter("n2", "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	if s := servers(t, l); len(s) != 2 || s["n2"].RaftAddr != "127.0.0.1:1" {
		t.Fatalf("after a new address for n2: %+v", s)
	}
	if err := l.AddNonvoter("n2", n2.RaftAddr()); err != nil {
		t.Fatal(err)
	}

	// Promoted, then a join retry: still a voter.
	if err := l.AddVoter("n2", n2.RaftAddr()); err != nil {
		t.Fatal(err)
	}
	if err := l.AddNonvoter("n2", n2.RaftAddr()); err != nil {
		t.Fatal(err)
	}
	if s := servers(t, l); s["n2"].Suffrage != "voter" {
		t.Fatalf("a join retry demoted voter n2: %+v", s)
	}
}

func TestRemoveServerAndWaitForRemoval(t *testing.T) {
	nodes := threeNodes(t)
	l := nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := l.WaitForRemoval(ctx, "n3"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForRemoval of a member = %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() { done <- nodes[1].WaitForRemoval(ctxFor(t, 10*time.Second), "n3") }()
	if err := l.RemoveServer("n3"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitForRemoval(ctxFor(t, time.Second), "n3"); err != nil {
		t.Fatalf("WaitForRemoval on the leader: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("WaitForRemoval on a follower: %v", err)
	}
	if s := servers(t, l); len(s) != 2 {
		t.Fatalf("configuration after removal: %+v", s)
	}
	apply(t, l) // two voters still commit
}

func TestTransferLeadership(t *testing.T) {
	nodes := threeNodes(t)
	if err := nodes[0].TransferLeadership("n3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n3 to lead", nodes[2].IsLeader)
	for _, n := range nodes {
		waitFor(t, 10*time.Second, n.ID()+" to follow n3", func() bool { id, _ := n.Leader(); return id == "n3" })
	}
	apply(t, nodes[2])
}

// TestPromoteCaughtUpNonvoter: the leader promotes a non-voter once the
// CaughtUp probe says it is close to the commit index, and not before.
func TestPromoteCaughtUpNonvoter(t *testing.T) {
	var mu sync.Mutex
	reported := map[string]uint64{} // what the probe answers, per server
	var probes []string
	probe := func(_ context.Context, id, httpAddr string) (uint64, error) {
		mu.Lock()
		defer mu.Unlock()
		probes = append(probes, id+"@"+httpAddr)
		return reported[id], nil
	}
	gossip := func(http string) func(*Config) {
		return func(c *Config) {
			c.GossipBind, c.FastGossip, c.HTTPAddr, c.JoinToken = "127.0.0.1:0", true, http, "unit-test-join-token"
			c.CaughtUp, c.PromoteLag = probe, 4
		}
	}
	l := newTestNode(t, "n1", true, gossip("127.0.0.1:8001"))
	n2 := newTestNode(t, "n2", false, gossip("127.0.0.1:8002"))
	if _, err := n2.Gossip().Join([]string{l.Gossip().Addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n1 to lead", l.IsLeader)
	for i := 0; i < 20; i++ {
		apply(t, l)
	}
	if err := l.AddNonvoter("n2", n2.RaftAddr()); err != nil {
		t.Fatal(err)
	}
	// The probe reports n2 far behind: it stays a non-voter.
	waitFor(t, 10*time.Second, "the leader to probe n2 at its gossiped HTTP address", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range probes {
			if p == "n2@127.0.0.1:8002" {
				return true
			}
		}
		return false
	})
	if s := servers(t, l); s["n2"].Suffrage != "nonvoter" {
		t.Fatalf("n2 promoted while reported behind: %+v", s)
	}
	mu.Lock()
	reported["n2"] = l.CommitIndex()
	mu.Unlock()
	waitFor(t, 10*time.Second, "n2 to be promoted", func() bool { return servers(t, l)["n2"].Suffrage == "voter" })
	if s := servers(t, l)["n2"]; s.HTTPAddr != "127.0.0.1:8002" || s.Alive == nil || !*s.Alive {
		t.Errorf("n2 as the leader sees it: %+v", s)
	}
}
