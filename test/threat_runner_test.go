package test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/threat"
	"github.com/hashicorp/raft"
)

// threatWait is waitFor with half as long again under the race detector
// (3× in all there), which slows the threat pipeline's goroutines more than
// raft's.
func threatWait(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if raceEnabled {
		timeout = timeout * 3 / 2
	}
	waitFor(t, timeout, what, cond)
}

// fsmNode is a one-replica stand-in for the raft node: Apply applies to the
// FSM at the next index; leadership is a switch the test flips.
type fsmNode struct {
	mu     sync.Mutex
	f      *fsm.FSM
	index  uint64
	leader atomic.Bool
	// loseOnRecord, when set, makes the next record command fail as a lost
	// leadership would, and steps down.
	loseOnRecord atomic.Bool
	// closed (under mu) is set when the test ends, before the FSM closes: a
	// runner's raft call may outlive its context (threat.apply leaves it
	// running, as raft does), and it then fails as a lost leadership would.
	closed bool
}

var errLostLeadership = errors.New("leadership lost")

func (n *fsmNode) IsLeader() bool                { return n.leader.Load() }
func (n *fsmNode) Barrier(context.Context) error { return nil }

func (n *fsmNode) Apply(_ context.Context, c fsm.Command) (*fsm.Result, error) {
	if !n.leader.Load() {
		return nil, errLostLeadership
	}
	if c.Type == fsm.CmdRecordAnomalies && n.loseOnRecord.CompareAndSwap(true, false) {
		n.leader.Store(false)
		return nil, errLostLeadership
	}
	if res := n.apply(c); res != nil {
		return res, nil
	}
	return nil, errLostLeadership
}

// apply applies c whoever leads (the test's own writes); nil once the test
// has ended.
func (n *fsmNode) apply(c fsm.Command) *fsm.Result {
	b, err := c.Encode()
	if err != nil {
		panic(err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.index++
	return n.f.Apply(&raft.Log{Index: n.index, Term: 1, Type: raft.LogCommand, Data: b}).(*fsm.Result)
}

// threatRig is an FSM with tenant acme, its admin boss, users alice and bob,
// and a node to run detector runners on.
type threatRig struct {
	t     *testing.T
	f     *fsm.FSM
	node  *fsmNode
	clock atomic.Int64
	hook  atomic.Pointer[threat.Runner]
	boss  fsm.Principal
}

var threatOp = fsm.Principal{Kind: fsm.PrincipalOperator, ID: "root", Name: "operator", Role: auth.RoleOperator}

func newThreatRig(t *testing.T) *threatRig {
	rig := &threatRig{t: t}
	rig.clock.Store(threatMonday.Add(10 * time.Hour).UnixNano())
	f, err := fsm.Open(t.TempDir(), fsm.Options{Logger: slog.New(slog.DiscardHandler), OnApply: func(i uint64, ch []fsm.Change) {
		if r := rig.hook.Load(); r != nil {
			r.OnApply(i, ch)
		}
	}, OnRestore: func(i uint64) {
		if r := rig.hook.Load(); r != nil {
			r.OnRestore(i)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	rig.f, rig.node = f, &fsmNode{f: f}
	t.Cleanup(func() {
		rig.node.mu.Lock()
		rig.node.closed = true
		rig.node.mu.Unlock()
		f.Close()
	})
	rig.must(threatOp, fsm.CmdCreateTenant, &fsm.CreateTenantCmd{ID: "acme", Tier: "professional"})
	for i, u := range []struct {
		name string
		role auth.Role
	}{{"alice", auth.RoleDeveloper}, {"bob", auth.RoleDeveloper}, {"boss", auth.RoleAdmin}} {
		rig.must(threatOp, fsm.CmdCreateUser, &fsm.CreateUserCmd{ID: hexUser(i), Tenant: "acme", Username: u.name, Role: u.role,
			PasswordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"})
	}
	rig.boss = fsm.Principal{Kind: fsm.PrincipalUser, ID: hexUser(2), Tenant: "acme", Role: auth.RoleAdmin, Name: "boss"}
	return rig
}

func (r *threatRig) now() time.Time { return time.Unix(0, r.clock.Load()).UTC() }

func (r *threatRig) must(p fsm.Principal, typ fsm.CommandType, payload any) *fsm.Result {
	r.t.Helper()
	c, err := fsm.NewCommand(typ, fsm.Header{Principal: p, Time: r.now().UnixNano()}, payload)
	if err != nil {
		r.t.Fatal(err)
	}
	res := r.node.apply(c)
	if res == nil {
		r.t.Fatalf("%s: the test has ended", typ)
	}
	if res.Err != nil {
		r.t.Fatalf("%s: %v", typ, res.Err)
	}
	return res
}

// failures appends n failed logins for username (id) from ip, 10 s apart.
func (r *threatRig) failures(id, username, ip string, n int) {
	var ins []fsm.AuditInput
	for i := 0; i < n; i++ {
		r.clock.Add(int64(10 * time.Second))
		ins = append(ins, fsm.AuditInput{Tenant: "acme", Time: r.now(), Action: fsm.ActionLoginFailed,
			Actor: fsm.Actor{Kind: fsm.PrincipalUser, ID: id, Name: username}, Resource: "user/" + id,
			Outcome: fsm.OutcomeFailure, IP: ip, Error: "invalid credentials"})
	}
	r.must(fsm.Principal{Kind: fsm.PrincipalSystem, ID: "s1"}, fsm.CmdAppendAudit, &fsm.AppendAuditCmd{Entries: ins})
}

// runner starts a detector runner (a new leader's) until the test ends.
func (r *threatRig) runner(sinks ...threat.Sink) (*threat.Runner, context.CancelFunc) {
	r.t.Helper()
	run, err := threat.NewRunner(threat.RunnerConfig{NodeID: "s1", FSM: r.f, Node: r.node, Now: r.now,
		Logger: slog.New(slog.DiscardHandler), CheckpointEvery: 20 * time.Millisecond, CheckpointEntries: 1, PollEvery: 5 * time.Millisecond, Sinks: sinks})
	if err != nil {
		r.t.Fatal(err)
	}
	r.hook.Store(run)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); run.Run(ctx) }()
	stop := func() { cancel(); <-done }
	r.t.Cleanup(stop)
	return run, stop
}

func (r *threatRig) anomalies() []*fsm.Anomaly {
	var out []*fsm.Anomaly
	_ = r.f.View(func(rd *fsm.Reader) error { out, _ = rd.Anomalies(fsm.AnomalyQuery{Tenant: "acme"}); return nil })
	return out
}

func (r *threatRig) mark() (mark, head uint64) {
	_ = r.f.View(func(rd *fsm.Reader) error {
		mark = rd.ThreatMarks()["acme"]
		for _, h := range rd.AuditHeads() {
			if h.Tenant == "acme" {
				head = h.Seq
			}
		}
		return nil
	})
	return mark, head
}

func (r *threatRig) user(id string) *fsm.User {
	var u *fsm.User
	_ = r.f.View(func(rd *fsm.Reader) error { u, _ = rd.User("acme", id); return nil })
	return u
}

func (r *threatRig) blockRules() []*fsm.IPRule {
	var out []*fsm.IPRule
	_ = r.f.View(func(rd *fsm.Reader) error {
		for _, ru := range rd.IPRules("acme", 1000) {
			if ru.Action == fsm.IPBlock {
				out = append(out, ru)
			}
		}
		return nil
	})
	return out
}

type sinkFunc func(a *fsm.Anomaly)

func (f sinkFunc) Publish(a *fsm.Anomaly) { f(a) }

// TestThreatRunnerRecordsOnceAcrossLeaders: the leader's runner detects a
// brute force in committed entries and records it with its responses (alice
// locked, the address blocked) in one raft entry; a second leader replays
// the window, continues the same attack without acting twice, and still
// catches a new one. An admin undoes the first.
func TestThreatRunnerRecordsOnceAcrossLeaders(t *testing.T) {
	rig := newThreatRig(t)
	var published atomic.Int32
	rig.node.leader.Store(true)
	_, stopA := rig.runner(sinkFunc(func(*fsm.Anomaly) { published.Add(1) }))

	alice := hexUser(0)
	rig.failures(alice, "alice", "198.51.100.7", 6)
	threatWait(t, 5*time.Second, "the brute force recorded", func() bool { return len(rig.anomalies()) == 1 })
	a := rig.anomalies()[0]
	if a.Kind != fsm.AnomalyBruteForce || a.Subject.UserID != alice || a.Subject.IP != "198.51.100.7" || len(a.Actions) != 2 {
		t.Fatalf("anomaly = %+v", a)
	}
	for _, act := range a.Actions {
		if !act.Applied {
			t.Errorf("action not applied: %+v", act)
		}
	}
	if u := rig.user(alice); !u.Locked(rig.now()) {
		t.Errorf("alice not locked: %+v", u)
	}
	if rules := rig.blockRules(); len(rules) != 1 || rules[0].CIDR != "198.51.100.7/32" || rules[0].ExpiresAt.IsZero() {
		t.Errorf("block rules = %+v", rules)
	}
	threatWait(t, 5*time.Second, "the alert published", func() bool { return published.Load() == 1 })
	threatWait(t, 5*time.Second, "the watermark checkpointed to the head", func() bool { m, h := rig.mark(); return m == h })

	// Leader change: the old runner stops; more failures of the same attack
	// arrive; a new leader's runner takes over from the replicated watermark.
	rig.node.leader.Store(false)
	stopA()
	rig.failures(alice, "alice", "198.51.100.7", 3)
	rig.node.leader.Store(true)
	runB, _ := rig.runner()
	threatWait(t, 5*time.Second, "the new leader analysed to the head", func() bool {
		m, h := rig.mark()
		return runB.Leading() && m == h
	})
	if n := len(rig.anomalies()); n != 1 {
		t.Fatalf("the new leader acted again on the same attack: %d anomalies", n)
	}
	if n := len(rig.blockRules()); n != 1 {
		t.Fatalf("%d block rules after failover, want 1", n)
	}
	// A new attack is still caught by the new leader.
	rig.failures(hexUser(1), "bob", "198.51.100.8", 5)
	threatWait(t, 5*time.Second, "the second brute force recorded", func() bool { return len(rig.anomalies()) == 2 })

	// The admin undoes the first: alice unlocked, the rule removed.
	res := rig.must(rig.boss, fsm.CmdUndoAnomaly, &fsm.UndoAnomalyCmd{Tenant: "acme", ID: a.ID})
	undone := res.Value.(*fsm.Anomaly)
	if undone.UndoneAt.IsZero() || !undone.Actions[0].Undone || !undone.Actions[1].Undone {
		t.Fatalf("undo = %+v", undone)
	}
	if rig.user(alice).Locked(rig.now()) {
		t.Error("alice still locked after undo")
	}
	if rules := rig.blockRules(); len(rules) != 1 || rules[0].CIDR != "198.51.100.8/32" {
		t.Errorf("block rules after undo = %+v", rules)
	}
}

// TestThreatRunnerLostRecordIsRedetected: the leader detects but loses its
// leadership before the record commits; the next leader re-detects the same
// anomaly from the same entries (same id) and records it once.
func TestThreatRunnerLostRecordIsRedetected(t *testing.T) {
	rig := newThreatRig(t)
	rig.node.leader.Store(true)
	rig.node.loseOnRecord.Store(true)
	runA, stopA := rig.runner()
	rig.failures(hexUser(0), "alice", "198.51.100.7", 5)
	threatWait(t, 5*time.Second, "the first leader to lose its record", func() bool { return !rig.node.leader.Load() && !runA.Leading() })
	stopA()
	if n := len(rig.anomalies()); n != 0 {
		t.Fatalf("%d anomalies recorded by a leader that lost", n)
	}
	rig.node.leader.Store(true)
	rig.runner()
	threatWait(t, 5*time.Second, "the new leader records it", func() bool { return len(rig.anomalies()) == 1 })
	m, _ := rig.mark()
	a := rig.anomalies()[0]
	if a.TriggerSeq > m || a.Kind != fsm.AnomalyBruteForce {
		t.Fatalf("anomaly %+v at mark %d", a, m)
	}
}

// TestThreatRunnerAfterRestore: a snapshot restored under a running leader
// replaces the log the runner was following; it starts over from the
// restored watermarks, so an attack after the restore (at sequence numbers
// the runner had already passed before it) is still caught.
func TestThreatRunnerAfterRestore(t *testing.T) {
	rig := newThreatRig(t)
	rig.node.leader.Store(true)
	var snap bytes.Buffer
	if err := rig.f.WriteSnapshotTo(&snap); err != nil {
		t.Fatal(err)
	}
	run, _ := rig.runner()
	rig.failures(hexUser(0), "alice", "198.51.100.7", 40) // analysed, one anomaly
	threatWait(t, 5*time.Second, "the first attack recorded", func() bool { return len(rig.anomalies()) == 1 })
	_, head := rig.mark()
	threatWait(t, 5*time.Second, "the runner at the head", func() bool { return run.AnalysedTo("acme") >= head })

	// Restore the state from before the attack: the log is short again.
	if err := rig.f.Restore(io.NopCloser(bytes.NewReader(snap.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if n := len(rig.anomalies()); n != 0 {
		t.Fatalf("%d anomalies after restoring a snapshot from before them", n)
	}
	rig.failures(hexUser(1), "bob", "198.51.100.8", 5)
	threatWait(t, 5*time.Second, "the attack after the restore recorded", func() bool { return len(rig.anomalies()) == 1 })
	if a := rig.anomalies()[0]; a.Subject.Username != "bob" {
		t.Fatalf("anomaly after restore = %+v", a)
	}
}
