package cluster

import (
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func leaderOf(nodes []*testNode) *testNode {
	for _, n := range nodes {
		if n.IsLeader() {
			return n
		}
	}
	return nil
}

// TestFailoverKillLeader kills the leader of a 3-server cluster (no
// goodbye: its transport and raft stop) three times in a row, and requires a
// new leader that commits a write each time. The elections must have been
// started by the failover detector (raft's own heartbeat timer can beat it
// to a single election, but not to all of them), and the times are logged:
// about the heartbeat timeout plus a fraction of it, where raft's own timer
// alone takes 1–3 timeouts and more when the first candidate is refused.
func TestFailoverKillLeader(t *testing.T) {
	nodes := cluster3(t, nil)
	live := slices.Clone(nodes)
	var took []time.Duration
	kicks := func() (sum int64) {
		for _, n := range nodes {
			s, v := n.ElectionKicks()
			sum += s + v
		}
		return sum
	}
	for round := 0; round < 3; round++ {
		old := leaderOf(live)
		if old == nil {
			t.Fatalf("round %d: no leader", round)
		}
		apply(t, old)
		live = slices.DeleteFunc(live, func(n *testNode) bool { return n == old })
		start := time.Now()
		old.Shutdown()
		var nl *testNode
		waitFor(t, 10*time.Second, "a new leader", func() bool { nl = leaderOf(live); return nl != nil })
		apply(t, nl)
		took = append(took, time.Since(start))
		// Bring the old leader back so the next round again has three
		// servers: a fresh node under the same id would need a new data
		// dir and a membership change, so instead restart raft on the old
		// node's data.
		re := restart(t, old)
		live = append(live, re)
		for i, n := range nodes {
			if n == old {
				nodes[i] = re
			}
		}
		waitFor(t, 10*time.Second, re.ID()+" to follow again", func() bool { id, _ := re.Leader(); return id != "" && id != re.ID() || re.IsLeader() })
	}
	t.Logf("leader loss → new leader committed a write: %v", took)
	if kicks() == 0 {
		t.Errorf("no election in %d leader losses was started by the failover detector", len(took))
	}
}

// TestVoteRequestClearsStaleLeader: a follower that has not heard from the
// leader for the heartbeat timeout but still remembers it (raft's own timer
// has not ticked) must time out before raft judges a candidate's request,
// instead of refusing it for having a leader, and then give way to that
// candidate for a moment.
func TestVoteRequestClearsStaleLeader(t *testing.T) {
	nodes := cluster3(t, func(c *Config) { c.noSilenceWatch = true })
	n2, n3 := nodes[1], nodes[2]
	fo := n2.failover
	apply(t, nodes[0])
	nodes[0].Shutdown()
	// The first candidate asks once its own spread is over: n2 has then
	// been without the leader for most of the timeout.
	waitFor(t, 10*time.Second, "n2 to miss the leader for 3/4 of the heartbeat timeout", func() bool {
		return time.Since(n2.LastContact()) >= 3*fo.hb/4
	})
	// n2's raft timer may tick first (then there is nothing to clear);
	// the request is the candidate's as long as n2 still follows n1.
	fo.voteRequest(raft.ServerID(n3.ID()), 0, n2.closing)
	if _, v := n2.ElectionKicks(); v == 0 {
		if id, _ := n2.Leader(); id == "n1" {
			t.Fatalf("n2 still follows the dead n1 after a vote request (state %s)", n2.State())
		}
		t.Skipf("n2's own heartbeat timer timed out first (state %s); nothing to clear", n2.State())
	}
	if since := time.Since(n2.LastContact()); since < fo.hb {
		t.Errorf("n2 timed out %v after its last contact, before the heartbeat timeout %v", since, fo.hb)
	}
	if id, _ := n2.Leader(); id == "n1" {
		t.Errorf("n2 still names n1 its leader after timing out (state %s)", n2.State())
	}
	start := time.Now()
	fo.giveWay(raft.ServerID(n3.ID()), n2.closing)
	if d := time.Since(start); d < fo.hb/8 {
		t.Errorf("n2's own request to the candidate n3 went out after %v, want it held back %v", d, fo.hb/8)
	}
	waitFor(t, 10*time.Second, "n2 or n3 to lead", func() bool { return n2.IsLeader() || n3.IsLeader() })
}

// TestVoteRequestWithLiveLeaderRefused: a candidate asking a follower that
// hears its leader changes nothing — the follower keeps its leader and does
// not time out.
func TestVoteRequestWithLiveLeaderRefused(t *testing.T) {
	nodes := cluster3(t, func(c *Config) { c.noSilenceWatch = true })
	n2 := nodes[1]
	apply(t, nodes[0])
	n2.failover.voteRequest("n3", 0, n2.closing)
	if _, v := n2.ElectionKicks(); v != 0 {
		t.Errorf("vote kicks = %d with a live leader, want 0", v)
	}
	if id, _ := n2.Leader(); id != "n1" || n2.State() != "Follower" {
		t.Errorf("n2: leader %q, state %s; want to follow n1", id, n2.State())
	}
	start := time.Now()
	n2.failover.giveWay("n3", n2.closing)
	if d := time.Since(start); d >= n2.failover.hb/8 {
		t.Errorf("giveWay held a request back %v without a vote kick", d)
	}
}

// restart starts a shut-down node again on its data dir and raft address.
func restart(t *testing.T, old *testNode) *testNode {
	t.Helper()
	old.fsm.Close()
	cfg := old.cfg
	cfg.RaftBind, cfg.RaftAdvertise, cfg.Bootstrap = old.RaftAddr(), old.RaftAddr(), false
	return startTestNode(t, cfg)
}

// TestCrossingPreVotes: of two candidates whose pre-votes for the same term
// cross, exactly one holds the other's request (the lower id), so they do
// not grant each other's and split the next term's vote; requests for
// another term are never held.
func TestCrossingPreVotes(t *testing.T) {
	for _, c := range []struct {
		self, cand        raft.ServerID
		term, preVoteTerm uint64
		want              bool
	}{
		{"n2", "n3", 5, 6, true},
		{"n3", "n2", 5, 6, false}, // the other side of the same crossing
		{"n2", "n3", 5, 5, false}, // a request this server's term already passed
		{"n2", "n3", 5, 7, false}, // a candidate a term ahead: not a crossing
		{"a", "b", 0, 1, true},
	} {
		if got := holdsCrossing(c.self, c.cand, c.term, c.preVoteTerm); got != c.want {
			t.Errorf("holdsCrossing(%s, %s, term %d, pre-vote term %d) = %v, want %v", c.self, c.cand, c.term, c.preVoteTerm, got, c.want)
		}
		// Exactly one of the two sides of a crossing holds.
		if c.preVoteTerm == c.term+1 && holdsCrossing(c.self, c.cand, c.term, c.preVoteTerm) == holdsCrossing(c.cand, c.self, c.term, c.preVoteTerm) {
			t.Errorf("%s and %s both hold or both grant", c.self, c.cand)
		}
	}
}
