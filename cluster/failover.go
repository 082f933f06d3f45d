package cluster

import (
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Fast failover.
//
// hashicorp/raft v1.7.2 loses time after a leader dies in two places, and
// together they made failover take 0.9–1.3 s (median) with a 400 ms heartbeat
// timeout (FAULTS.md):
//
//  1. A follower does not time out when the leader has been silent for the
//     heartbeat timeout, but at the first tick of a timer that fires every
//     random 1–2 timeouts and is not reset by heartbeats: between 1 and 3
//     timeouts of silence, about 1.8 on average.
//  2. A follower that still knows a leader rejects every pre-vote and vote
//     ("leader stickiness"), until its own timer ticks. So the first
//     follower to time out is refused by the others; if its log is the
//     longest, nobody else can win either, and the cluster waits out the
//     first candidate's election timer (another 1–2 timeouts).
//
// The failover detector fixes both without touching raft's safety rules:
//
//   - watchLeaderSilence (on each server) tells raft to run its heartbeat
//     check as soon as the leader has been silent for the heartbeat timeout
//     plus a random spread of up to half of it. The spread keeps the
//     randomisation raft relies on to avoid split votes: the follower with
//     the shortest spread campaigns first.
//   - When a pre-vote or vote request reaches a follower that has itself not
//     heard from the leader for the heartbeat timeout, the follower first
//     lets raft time out (clearing the leader it still remembers), then hands
//     raft the request, which raft judges by its usual rules (term, log).
//     This is pre-vote as the Raft thesis defines it (§9.6: grant when the
//     candidate's log is up to date and no leader has been heard from within
//     the election timeout). A follower that does hear the leader still
//     refuses, so a cut-off server coming back cannot depose a live leader.
//   - The follower that was timed out that way holds back its own pre-vote
//     and vote requests to the candidate that asked for a moment (what a slow
//     network would do): otherwise, with equal logs, each would grant the
//     other's pre-vote and the two would split the vote. If its log is
//     longer than the candidate's, the candidate is refused and grants this
//     follower's request when it arrives.
//
// The only lever raft offers on a running follower is ReloadConfig: lowering
// the heartbeat timeout makes the follower check for a timeout at once. So
// raft runs with the configured heartbeat timeout plus kickSlack, and a kick
// lowers it to the configured value and restores it.
type failover struct {
	id      raft.ServerID // this server
	hb      time.Duration // configured heartbeat timeout: silence this long means the leader is gone
	resting time.Duration // raft's HeartbeatTimeout between kicks (hb + kickSlack)
	log     *slog.Logger

	raft atomic.Pointer[raft.Raft]
	mu   sync.Mutex // serialises kicks (ReloadConfig) and guards deferTo
	// deferTo: candidates this server's own vote requests give way to, and until when.
	deferTo map[raft.ServerID]time.Time

	silenceKicks atomic.Int64 // elections started by watchLeaderSilence
	voteKicks    atomic.Int64 // elections started by a candidate's request
}

// kickSlack is how much longer than the configured heartbeat timeout raft's
// own is, so that a kick can lower it (raft only re-checks a follower's
// timeout when the heartbeat timeout decreases, and never allows it below
// the leader lease, which defaults to the heartbeat timeout).
const kickSlack = time.Millisecond

func newFailover(id raft.ServerID, hb time.Duration, log *slog.Logger) *failover {
	return &failover{id: id, hb: hb, resting: hb + kickSlack, log: log, deferTo: map[raft.ServerID]time.Time{}}
}

// raftTimeouts returns the heartbeat and election timeouts to start raft with.
func (f *failover) raftTimeouts(election time.Duration) (heartbeat, electionOut time.Duration) {
	return f.resting, max(election, f.resting)
}

// spread draws how much longer than the heartbeat timeout this server waits
// before declaring the leader gone: uniform in [2·kickSlack, hb/2).
func (f *failover) spread() time.Duration {
	lo, hi := 2*kickSlack, f.hb/2
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo)
}

// kick makes a follower check its heartbeat timeout now: if the leader has
// been silent for the configured heartbeat timeout, raft starts an election.
func (f *failover) kick() bool {
	r := f.raft.Load()
	if r == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rc := r.ReloadableConfig()
	low := rc
	low.HeartbeatTimeout = f.hb
	if err := r.ReloadConfig(low); err != nil {
		f.log.Warn("raft: could not lower the heartbeat timeout to start an election", "err", err)
		return false
	}
	rc.HeartbeatTimeout = f.resting
	if err := r.ReloadConfig(rc); err != nil {
		f.log.Error("raft: could not restore the heartbeat timeout", "err", err)
	}
	return true
}

// watchLeaderSilence kicks raft once per silence when the leader has been
// quiet for the heartbeat timeout plus this server's spread. A server that
// has not heard from any leader since it started counts the silence from its
// start (a whole cluster restarted at once elects as soon as it can).
func (f *failover) watchLeaderSilence(closing <-chan struct{}) {
	started := time.Now()
	tick := time.NewTicker(silencePoll)
	defer tick.Stop()
	wait := f.hb + f.spread()
	var kickedFor time.Time // the last contact the previous kick was about
	kicked := false
	for {
		select {
		case <-closing:
			return
		case <-tick.C:
		}
		r := f.raft.Load()
		if r == nil || r.State() != raft.Follower {
			continue
		}
		lc := r.LastContact()
		since := lc
		if lc.IsZero() {
			since = started
		}
		if time.Since(since) < wait || (kicked && lc.Equal(kickedFor)) {
			continue
		}
		if f.kick() {
			kicked, kickedFor = true, lc
			f.silenceKicks.Add(1)
			f.log.Info("raft: leader silent; starting an election", "silent_for", time.Since(since).Round(time.Millisecond))
		}
		wait = f.hb + f.spread()
	}
}

// silencePoll is how often watchLeaderSilence looks at the last contact; it
// adds at most this much to failover.
const silencePoll = 5 * time.Millisecond

// voteRequest runs before raft sees a pre-vote or vote request from
// candidate. If this server is a follower whose leader has been silent for
// the heartbeat timeout, it lets raft time out first (so raft judges the
// request without the stale leader) and gives way to the candidate. A
// follower whose leader has been silent for half the timeout waits (at most
// the rest of it) for the silence to reach the timeout: the leader's
// heartbeats reach the followers at different moments (every 1–2 tenths of
// the timeout), so when the first candidate asks, the others may be a
// heartbeat short of the timeout. The leader's heartbeats bypass this path
// (raft's transport hands them to raft directly), so a live leader is seen
// while a request is held, and the request is then judged — and refused — at
// once.
//
// preVoteTerm is the term a pre-vote request asks for (0 for a vote
// request): see crossing.
func (f *failover) voteRequest(candidate raft.ServerID, preVoteTerm uint64, closing <-chan struct{}) {
	r := f.raft.Load()
	if r == nil {
		return
	}
	if st := r.State(); st == raft.Candidate && preVoteTerm != 0 {
		f.crossing(r, candidate, preVoteTerm, closing)
		return
	} else if st != raft.Follower {
		return
	}
	if _, id := r.LeaderWithID(); id == "" || id == candidate {
		return
	}
	lc := r.LastContact()
	if lc.IsZero() || time.Since(lc) < f.hb/2 {
		return // the leader spoke recently: raft refuses, as it should
	}
	heard := func() bool { return r.State() != raft.Follower || !r.LastContact().Equal(lc) }
	if closed := waitUntil(closing, lc.Add(f.resting), heard); closed || heard() {
		return
	}
	f.mu.Lock()
	f.deferTo[candidate] = time.Now().Add(2 * f.hb)
	f.mu.Unlock()
	if !f.kick() {
		return
	}
	f.voteKicks.Add(1)
	// Raft times out on its next loop; wait for it (bounded: a raft too
	// busy to do it in time simply judges the request as it stands).
	if waitUntil(closing, time.Now().Add(f.hb/4), func() bool { return r.State() != raft.Follower }) {
		return
	}
	f.log.Info("raft: vote request while the leader is silent; timed out first", "candidate", string(candidate), "state", r.State().String())
}

// crossing handles a pre-vote request from candidate reaching this server
// while it runs its own pre-vote for the same term: both followers
// campaigned within a few milliseconds of each other. Raft would grant it
// (no leader, logs alike), the other would grant this server's, and both
// would start the same term's election and split the vote (FAULTS.md: 2 of
// 81 leader losses, ~1.05 s). So one of the two — the one with the lower
// id, the same rule on both sides — holds the other's request until its own
// pre-vote is decided (its term moves on or it leaves the candidate state),
// or for an eighth of the heartbeat timeout at most: if this server's log is
// the shorter one, its own pre-vote fails and the other's is then granted.
func (f *failover) crossing(r *raft.Raft, candidate raft.ServerID, preVoteTerm uint64, closing <-chan struct{}) {
	term := r.CurrentTerm()
	if !holdsCrossing(f.id, candidate, term, preVoteTerm) {
		return
	}
	start := time.Now()
	decided := func() bool { return r.State() != raft.Candidate || r.CurrentTerm() != term }
	if waitUntil(closing, start.Add(f.hb/8), decided) {
		return
	}
	f.log.Info("raft: pre-votes crossed; held the other candidate's until ours was decided",
		"candidate", string(candidate), "held", time.Since(start).Round(time.Millisecond), "state", r.State().String())
}

// waitUntil polls done every millisecond until it holds or deadline passes;
// it reports whether closing closed first. Raft signals none of the states
// waited for here (its observers see leader changes, not a follower timing
// out or a pre-vote being decided), and each wait is bounded by a fraction
// of the heartbeat timeout.
func waitUntil(closing <-chan struct{}, deadline time.Time, done func() bool) (closed bool) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !done() && time.Now().Before(deadline) {
		select {
		case <-closing:
			return true
		case <-tick.C:
		}
	}
	return false
}

// holdsCrossing reports whether server self, a candidate at term, holds a
// pre-vote request from candidate for preVoteTerm (crossing).
func holdsCrossing(self, candidate raft.ServerID, term, preVoteTerm uint64) bool {
	return preVoteTerm == term+1 && self < candidate
}

// giveWay delays this server's own vote request to target while it gives way
// to target's candidacy.
func (f *failover) giveWay(target raft.ServerID, closing <-chan struct{}) {
	f.mu.Lock()
	until, ok := f.deferTo[target]
	if ok && time.Now().After(until) {
		delete(f.deferTo, target)
		ok = false
	}
	f.mu.Unlock()
	if !ok {
		return
	}
	select {
	case <-closing:
	case <-time.After(f.hb / 8):
	}
}
