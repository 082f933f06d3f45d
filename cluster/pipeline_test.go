package cluster

import (
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// blockingPipeline is an AppendPipeline whose AppendEntries blocks until the
// pipeline is closed, like raft's netPipeline when its response reader is
// stuck behind a decoder that has gone.
type blockingPipeline struct{ closed chan struct{} }

func (p *blockingPipeline) AppendEntries(*raft.AppendEntriesRequest, *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	<-p.closed
	return nil, raft.ErrPipelineShutdown
}
func (p *blockingPipeline) Consumer() <-chan raft.AppendFuture { return nil }
func (p *blockingPipeline) Close() error                       { close(p.closed); return nil }

func TestGuardedPipelineUnblocksAStuckAppend(t *testing.T) {
	tr := &guardedTransport{stuckAfter: 20 * time.Millisecond, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	inner := &blockingPipeline{closed: make(chan struct{})}
	p := &guardedPipeline{AppendPipeline: inner, t: tr, peer: "f1"}
	done := make(chan error, 1)
	go func() {
		_, err := p.AppendEntries(&raft.AppendEntriesRequest{}, &raft.AppendEntriesResponse{})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, raft.ErrPipelineShutdown) {
			t.Fatalf("stuck append returned %v, want ErrPipelineShutdown", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the guard did not close a stuck pipeline")
	}
	if got := tr.unstuck.Load(); got != 1 {
		t.Fatalf("unstuck = %d, want 1", got)
	}
	// raft closes the pipeline again when replication stops: no double close.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// quickThenStuckPipeline answers its first quick calls at once and blocks the
// next one until closed.
type quickThenStuckPipeline struct {
	blockingPipeline
	quick int
}

func (p *quickThenStuckPipeline) AppendEntries(req *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) (raft.AppendFuture, error) {
	if p.quick > 0 {
		p.quick--
		return nil, nil
	}
	return p.blockingPipeline.AppendEntries(req, resp)
}

func TestGuardedPipelineReusesItsTimer(t *testing.T) {
	tr := &guardedTransport{stuckAfter: time.Second, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	inner := &quickThenStuckPipeline{blockingPipeline: blockingPipeline{closed: make(chan struct{})}, quick: 50}
	p := &guardedPipeline{AppendPipeline: inner, t: tr, peer: "f1"}
	for range 50 {
		if _, err := p.AppendEntries(&raft.AppendEntriesRequest{}, &raft.AppendEntriesResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	// Calls that returned must not have left the guard armed.
	select {
	case <-inner.closed:
		t.Fatal("the guard closed a pipeline whose calls all returned")
	case <-time.After(2 * tr.stuckAfter):
	}
	if _, err := p.AppendEntries(&raft.AppendEntriesRequest{}, &raft.AppendEntriesResponse{}); !errors.Is(err, raft.ErrPipelineShutdown) {
		t.Fatalf("stuck append returned %v, want ErrPipelineShutdown", err)
	}
	if got := tr.unstuck.Load(); got != 1 {
		t.Fatalf("unstuck = %d, want 1", got)
	}
}
