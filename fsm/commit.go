package fsm

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Group commit.
//
// A bbolt transaction costs ~11 µs of CPU to begin and commit before any
// work (~30 µs with one audit entry, which dirties the deep audit tree:
// BenchmarkApplyNoopBatch1, BenchmarkApplyAuditSingleBatch1), and raft hands ApplyBatch a batch per commit-index advance, often
// of one or a few entries. So batches made only of audit appends and noops
// are applied into one write transaction that stays open across batches and
// is committed
//
//   - before anything reads the state (View, Snapshot, Path, Close): a read
//     sees every applied entry, as when each batch committed;
//   - flushDelay after its first batch (so reads seldom have to);
//   - once it holds maxOpenLogs entries, maxOpenBytes of commands or
//     maxOpenNodes bbolt nodes.
//
// The chain heads the open transaction's batches move and its applied index
// are kept in memory (FSM.openHeads, openApplied) and stored once, when it
// commits, not per batch: nothing reads them before, and the state committed
// is the same.
//
// Every other batch commits on its own, after the open transaction, as
// before. The state file is rebuilt from raft on start, so an open
// transaction lost in a crash loses nothing.
//
// A commit that grows bbolt's memory map waits until no read transaction is
// open. A read that waits for a commit while its own goroutine holds another
// read (a nested View) would then wait forever. So the grouped commands are
// those whose writes are bounded by their size, and a transaction is left
// open only while the file is more than remapMargin below the map's end,
// which the open transaction's bounds cannot cross; near it every batch
// commits on its own, and only raft's goroutine waits for a remap, as before.
//
// If a batch panics (a corrupt entry), the open transaction is rolled back
// and the batches before it are applied again and committed, so the state
// is what it was before the panicking batch, as when each batch committed.
const (
	flushDelay    = 10 * time.Millisecond
	maxOpenLogs   = 1024
	maxOpenBytes  = 1 << 20
	maxOpenNodes  = 4096
	maxGroupBytes = 64 << 10 // a larger batch commits on its own
	remapMargin   = 256 << 20
	// bbolt maps the file in 1 GiB steps beyond 1 GiB; openBolt maps
	// initialMmap from the start.
	mmapStep = 1 << 30
)

// apply applies one raft batch and returns its changes.
func (f *FSM) apply(logs []*raft.Log, out []any) []Change {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if groupable(logs) {
		if changes, ok := f.applyGrouped(logs, out); ok {
			return changes
		}
	}
	if err := f.commitOpen(); err != nil {
		panic(fmt.Sprintf("fsm: %v", err))
	}
	var changes []Change
	bs := newBatchState()
	defer bs.release() // after the transaction, even when it panics
	err := f.db.Update(func(tx *bolt.Tx) error {
		changes = f.applyTx(tx, bs, logs, out)
		f.nearRemap.Store(nearRemap(tx))
		return nil
	})
	if err != nil {
		// The store failed under us (disk full, I/O error). Replicas must not
		// diverge, so stop here; the state is rebuilt from raft on restart.
		panic(fmt.Sprintf("fsm: apply batch ending at %d: %v", logs[len(logs)-1].Index, err))
	}
	return changes
}

// groupable reports whether logs may join the open transaction: small, and
// every command an audit append or a noop in the binary envelope.
func groupable(logs []*raft.Log) bool {
	n := 0
	for _, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		if n += len(l.Data); n > maxGroupBytes {
			return false
		}
		if t := commandType(l.Data); t != CmdAppendAudit && t != CmdNoop {
			return false
		}
	}
	return true
}

// commandType is the type of a command in the binary envelope, else
// CmdInvalid.
func commandType(b []byte) CommandType {
	if len(b) < 2 || b[0] != encodingV2 {
		return CmdInvalid
	}
	t, k := binary.Uvarint(b[1:])
	if k <= 0 || t > math.MaxUint16 {
		return CmdInvalid
	}
	return CommandType(t)
}

// nearRemap reports whether tx's file is within remapMargin of the end of
// bbolt's map.
func nearRemap(tx *bolt.Tx) bool { return nearMapEnd(tx.Size()) }

// nearMapEnd reports whether a file of size bytes is within remapMargin of
// the end of bbolt's map, which is at least size rounded up to mmapStep.
func nearMapEnd(size int64) bool {
	end := max((size+mmapStep-1)/mmapStep*mmapStep, initialMmap)
	return size+remapMargin >= end
}

// applyGrouped applies logs in the open transaction (opening it if need be);
// false when the file is near a remap and logs must commit on their own.
func (f *FSM) applyGrouped(logs []*raft.Log, out []any) ([]Change, bool) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.failed != nil {
		panic(fmt.Sprintf("fsm: %v", f.failed))
	}
	if f.open == nil {
		if f.nearRemap.Load() {
			return nil, false
		}
		tx, err := f.db.Begin(true)
		if err != nil {
			panic(fmt.Sprintf("fsm: begin: %v", err))
		}
		if nearRemap(tx) {
			f.nearRemap.Store(true)
			_ = tx.Rollback()
			return nil, false
		}
		f.open = tx
	}
	bs := newBatchState()
	bs.heads = &f.openHeads
	applied := false
	defer func() {
		if !applied {
			f.recoverOpen()
			bs.release()
		}
	}()
	changes := f.applyTx(f.open, bs, logs, out)
	applied = true
	// bolt references the batch's arena until the transaction ends.
	f.openArenas = append(f.openArenas, bs)
	f.openLogs = append(f.openLogs, logs)
	f.openN += len(logs)
	for _, l := range logs {
		f.openBytes += len(l.Data)
	}
	st := f.open.Stats()
	if f.openN >= maxOpenLogs || f.openBytes >= maxOpenBytes || st.GetNodeCount() >= maxOpenNodes {
		if err := f.commitOpenLocked(); err != nil {
			panic(fmt.Sprintf("fsm: %v", err))
		}
		return changes, true
	}
	if !f.pending.Load() {
		f.pending.Store(true)
		if f.flushTimer == nil {
			f.flushTimer = time.AfterFunc(f.flushDelay, f.flush)
		} else {
			f.flushTimer.Reset(f.flushDelay)
		}
	}
	return changes, true
}

// recoverOpen runs while a batch applied in the open transaction panics: it
// rolls the transaction back and applies the batches before it again, so the
// store holds exactly what was applied before the panicking batch.
func (f *FSM) recoverOpen() {
	_ = f.open.Rollback()
	before := f.openLogs
	f.openLogs = nil // applied again below; endOpen must not clear them
	f.endOpen()
	if len(before) == 0 {
		return
	}
	var arenas []*batchState
	defer func() {
		for _, bs := range arenas {
			bs.release()
		}
	}()
	err := f.db.Update(func(tx *bolt.Tx) error {
		for _, logs := range before {
			bs := newBatchState()
			arenas = append(arenas, bs)
			f.applyTx(tx, bs, logs, make([]any, len(logs)))
		}
		return nil
	})
	if err != nil {
		f.fail(fmt.Errorf("apply the batches before a panicking one again: %w", err))
	}
}

// flush commits the open transaction (the timer's callback).
func (f *FSM) flush() {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.commitOpen(); err != nil {
		f.log.Error("state commit failed", "err", err)
	}
}

// commitOpen commits the open transaction, if any; the caller holds mu. An
// error means the state no longer holds every applied entry: reads fail and
// the next batch stops raft's apply goroutine.
func (f *FSM) commitOpen() error {
	if !f.pending.Load() && !f.broken.Load() {
		return nil
	}
	f.wmu.Lock()
	defer f.wmu.Unlock()
	return f.commitOpenLocked()
}

func (f *FSM) commitOpenLocked() error {
	if f.failed != nil {
		return f.failed
	}
	if f.open == nil {
		return nil
	}
	if f.openApplied != 0 {
		f.openArena = f.openHeads.flush(f.open, f.openArena[:0])
		f.openArena = putApplied(f.open, f.openArena, f.openApplied)
		f.openApplied = 0
	}
	err := f.open.Commit()
	f.endOpen()
	if err != nil {
		f.fail(fmt.Errorf("commit applied entries: %w", err))
	}
	return f.failed
}

// discardOpen rolls back the open transaction (Restore replaces the state);
// the caller holds mu for writing.
func (f *FSM) discardOpen() {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	if f.open != nil {
		_ = f.open.Rollback()
	}
	f.endOpen()
	f.nearRemap.Store(false)
	f.failed = nil
	f.broken.Store(false)
}

// endOpen forgets the open transaction, which has committed or been rolled
// back: its batches, arenas, heads and applied index. The caller holds wmu.
func (f *FSM) endOpen() {
	f.open = nil
	f.releaseArenas()
	f.openHeads.reset()
	f.openApplied = 0
	clear(f.openLogs)
	f.openLogs, f.openN, f.openBytes = f.openLogs[:0], 0, 0
	f.pending.Store(false)
}

// fail records that the state file no longer holds what was applied; the
// caller holds wmu.
func (f *FSM) fail(err error) {
	f.failed = err
	f.broken.Store(true)
}

// releaseArenas returns the arenas of the open transaction's batches to their
// pool; the transaction has ended.
func (f *FSM) releaseArenas() {
	for _, bs := range f.openArenas {
		bs.release()
	}
	clear(f.openArenas)
	f.openArenas = f.openArenas[:0]
}
