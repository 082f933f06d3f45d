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

	failover     *failover // vote requests go past it (Consumer, RequestVote)
	consumer     chan raft.RPC
	consumerOnce sync.Once
	done         chan struct{} // closed by Close
	closeOnce    sync.Once
}

func newGuardedTransport(nt *raft.NetworkTransport, stuckAfter time.Duration, fo *failover, log *slog.Logger) *guardedTransport {
	return &guardedTransport{NetworkTransport: nt, stuckAfter: stuckAfter, failover: fo, log: log, done: make(chan struct{})}
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

// Consumer hands raft the transport's incoming RPCs, running pre-vote and
// vote requests past the failover detector first (failover.voteRequest).
// Those are delivered from their own goroutine: holding one back must not
// hold back the AppendEntries behind it (the candidate's connection waits
// for its answer either way).
func (t *guardedTransport) Consumer() <-chan raft.RPC {
	t.consumerOnce.Do(func() {
		t.consumer = make(chan raft.RPC)
		go t.forward()
	})
	return t.consumer
}

func (t *guardedTransport) forward() {
	in := t.NetworkTransport.Consumer()
	for {
		select {
		case <-t.done:
			return
		case rpc := <-in:
			var candidate []byte
			var preVoteTerm uint64
			switch req := rpc.Command.(type) {
			case *raft.RequestPreVoteRequest:
				candidate, preVoteTerm = req.ID, req.Term
			case *raft.RequestVoteRequest:
				candidate = req.ID
			}
			if candidate == nil {
				t.deliver(rpc)
				continue
			}
			go func() {
				t.failover.voteRequest(raft.ServerID(candidate), preVoteTerm, t.done)
				t.deliver(rpc)
			}()
		}
	}
}

func (t *guardedTransport) deliver(rpc raft.RPC) {
	select {
	case t.consumer <- rpc:
	case <-t.done:
	}
}

// RequestPreVote and RequestVote give way to a candidate this server has
// just timed out for (failover.giveWay) before asking it.
func (t *guardedTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	t.failover.giveWay(id, t.done)
	return t.NetworkTransport.RequestPreVote(id, target, args, resp)
}

func (t *guardedTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	t.failover.giveWay(id, t.done)
	return t.NetworkTransport.RequestVote(id, target, args, resp)
}

// Close stops the forwarding goroutine and closes the transport.
func (t *guardedTransport) Close() error {
	t.closeOnce.Do(func() { close(t.done) })
	return t.NetworkTransport.Close()
}
