package api

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// Follower catch-up. Some requests are served from any server's own replica
// (the KMS field operations), so a follower can be asked about state a client
// has just written through another server: a key created, a version rotated
// in. Raft acknowledges the write once the leader has applied it, but a
// follower learns that it was committed only with the leader's next message,
// and applies it after that. Before such a request answers "not found", the
// follower asks the leader for its commit index (the read index of the Raft
// thesis, §6.4, over the leader's /health) and waits, briefly, until it has
// applied that far; then the caller looks again. Every write acknowledged
// before the request arrived is then visible, as on the leader.

const (
	// catchUpWait bounds the wait for the local state to reach the index.
	catchUpWait = 2 * time.Second
	// leaderIndexTimeout bounds the leader's answer.
	leaderIndexTimeout = time.Second
	// maxLeaderIndexCalls bounds the calls to the leader in flight from this
	// server, so that a flood of requests for keys that do not exist costs
	// the leader little: beyond it a miss waits only for what this server
	// already knows is committed.
	maxLeaderIndexCalls = 8
)

// catchUp brings this server's state up to the leader's commit index and
// reports whether it moved past seen, the applied index at which the caller
// found nothing (so looking again may find something). On the leader it
// reports false: its state holds every acknowledged write.
func (s *Server) catchUp(ctx context.Context, seen uint64) bool {
	if s.node.IsLeader() {
		return false
	}
	target := s.node.CommitIndex()
	if idx, ok := s.leaderCommitIndex(ctx); ok && idx > target {
		target = idx
	}
	if s.fsm.AppliedIndex() < target {
		t := time.NewTimer(catchUpWait)
		defer t.Stop()
		select {
		case <-s.fsm.AppliedCh(target):
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return s.fsm.AppliedIndex() > seen
}

// leaderCommitIndex asks the leader for its commit index; false when there
// is no leader, it does not answer in time, or too many calls are in flight.
func (s *Server) leaderCommitIndex(ctx context.Context) (uint64, bool) {
	select {
	case s.leaderCalls <- struct{}{}:
		defer func() { <-s.leaderCalls }()
	default:
		return 0, false
	}
	leader, err := s.node.LeaderHTTP()
	if err != nil {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(ctx, leaderIndexTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.cfg.Scheme+"://"+leader+"/health", nil)
	if err != nil {
		return 0, false
	}
	resp, err := s.proxy.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var h Health
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&h); err != nil || h.Role != "leader" {
		return 0, false
	}
	return h.CommitIndex, true
}
