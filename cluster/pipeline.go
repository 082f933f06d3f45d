package cluster

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// guardedTransport wraps raft's network transport so that a pipelined
// AppendEntries can never block forever.
//
// hashicorp/raft v1.7.2 can deadlock a leader's replication goroutine: when
// the pipeline's decoder stops (the follower answered with a higher term or
// a failure, or a read timed out), the sender may be inside
// pipeline.AppendEntries, blocked handing the next request to a response
// reader that is itself blocked handing the previous response to the
// decoder that is gone. Nothing but the pipeline's Close unblocks it, and
// only the blocked goroutine would call Close. The replication goroutine
// then never ends, and raft.Shutdown waits for it forever (found by
// TestClusterInProcess: closing a server hung for ten minutes after a
// membership change under load).
//
// The guard closes a pipeline whose AppendEntries has not returned within
// stuckAfter; the blocked call then fails with ErrPipelineShutdown and raft
// falls back to ordinary replication and opens a new pipeline. A healthy
// pipeline call returns as soon as the request is written, so stuckAfter
// (the transport's I/O timeout) is never reached by a merely slow follower.
type guardedTransport struct {
	*raft.NetworkTransport
	stuckAfter time.Duration
	log        *slog.Logger
	unstuck    atomic.Int64 // pipelines closed by the guard
}

func (t *guardedTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	return &guardedPipeline{AppendPipeline: p, t: t, peer: id}, nil
}

type guardedPipeline struct {
	raft.AppendPipeline
	t         *guardedTransport
	peer      raft.ServerID
	closeOnce sync.Once
	// timer is armed for each AppendEntries call and stopped when it
	// returns; one per pipeline, since raft calls AppendEntries from the
	// follower's single replication goroutine (no timer allocated per append).
	timer *time.Timer
}

func (p *guardedPipeline) AppendEntries(args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	if p.timer == nil {
		p.timer = time.AfterFunc(p.t.stuckAfter, p.stuck)
	} else {
		p.timer.Reset(p.t.stuckAfter)
	}
	defer p.timer.Stop()
	return p.AppendPipeline.AppendEntries(args, resp)
}

func (p *guardedPipeline) stuck() {
	p.t.unstuck.Add(1)
	p.t.log.Warn("raft pipeline to a follower stuck; closing it", "peer", string(p.peer), "after", p.t.stuckAfter)
	_ = p.Close()
}

func (p *guardedPipeline) Close() error {
	var err error
	p.closeOnce.Do(func() { err = p.AppendPipeline.Close() })
	return err
}
