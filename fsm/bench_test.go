package fsm

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The state machine's per-entry CPU, on one FSM (the cluster benchmarks in
// test/ pay it once per replica):
//
//	go test -run '^$' -bench 'BenchmarkApply' -benchmem ./fsm/
//
// One op is one applied audit entry (or one noop command).

func benchAuditInput(i int) AuditInput {
	return AuditInput{Tenant: "bench", Time: baseTime.Add(time.Duration(i) * time.Millisecond), Action: ActionAPIKeyUsed,
		Actor:    Actor{Kind: PrincipalAPIKey, ID: "k_7f3a9c2e", Name: "ci"},
		Resource: "/v1/orders", Outcome: OutcomeSuccess, IP: "203.0.113.7",
		RequestID: fmt.Sprintf("%024x", i)}
}

// benchApply applies b.N commands built by mk, batch commands per raft batch
// (what raft hands ApplyBatch), and reports per-op figures for perOp
// entries per command.
func benchApply(b *testing.B, batch, perOp int, mk func(i int) []byte) {
	benchApplyRead(b, batch, perOp, false, mk)
}

// benchApplyRead is benchApply, reading the state after every batch when
// read is set (which commits the batch: see commit.go).
func benchApplyRead(b *testing.B, batch, perOp int, read bool, mk func(i int) []byte) {
	f := newFSM(b)
	ncmds := 1024
	if perOp > 1 {
		ncmds = 8
	}
	cmds := make([][]byte, 0, ncmds)
	for i := range ncmds {
		cmds = append(cmds, mk(i))
	}
	var index uint64
	logs := make([]*raft.Log, 0, batch)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	for n := 0; n < b.N; n += batch {
		logs = logs[:0]
		for j := 0; j < batch && n+j < b.N; j++ {
			index++
			logs = append(logs, &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: cmds[(n+j)%len(cmds)]})
		}
		f.ApplyBatch(logs)
		if read {
			_ = f.View(func(*Reader) error { return nil })
		}
	}
	b.StopTimer()
	// The machine is shared: CPU time is steadier than wall time.
	cpu := float64(processCPU(b) - cpu0)
	b.ReportMetric(cpu/float64(b.N), "cpu-ns/op")
	if perOp > 1 {
		b.ReportMetric(cpu/float64(b.N*perOp), "cpu-ns/entry")
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkApplyAuditSingle: one entry per command, 32 commands per raft
// batch (BenchmarkRaftWrites' "ours" series at high concurrency).
func BenchmarkApplyAuditSingle(b *testing.B) {
	benchApply(b, 32, 1, func(i int) []byte {
		return mustEncode(b, CmdAppendAudit, Header{Principal: sysP, Time: baseTime.UnixNano()},
			&AppendAuditCmd{Entries: []AuditInput{benchAuditInput(i)}})
	})
}

// BenchmarkApplyAuditSingleBatch64: one entry per command, 64 commands per
// raft batch (what followers are handed at high concurrency: raft sends up to
// MaxAppendEntries entries at once). Batches longer than 32 commands used to
// allocate a fresh slab of entries per command (TestAuditEntriesShareSlabs).
func BenchmarkApplyAuditSingleBatch64(b *testing.B) {
	benchApply(b, 64, 1, func(i int) []byte {
		return mustEncode(b, CmdAppendAudit, Header{Principal: sysP, Time: baseTime.UnixNano()},
			&AppendAuditCmd{Entries: []AuditInput{benchAuditInput(i)}})
	})
}

// BenchmarkApplyAuditSingleBatch1: one entry per command, one command per
// raft batch (concurrency 1).
func BenchmarkApplyAuditSingleBatch1(b *testing.B) {
	benchApply(b, 1, 1, func(i int) []byte {
		return mustEncode(b, CmdAppendAudit, Header{Principal: sysP, Time: baseTime.UnixNano()},
			&AppendAuditCmd{Entries: []AuditInput{benchAuditInput(i)}})
	})
}

// BenchmarkApplyAuditSingleBatch5: one entry per command, five commands per
// raft batch (what raft hands the state machine in BenchmarkRaftWrites at
// concurrency 64).
func BenchmarkApplyAuditSingleBatch5(b *testing.B) {
	benchApply(b, 5, 1, func(i int) []byte {
		return mustEncode(b, CmdAppendAudit, Header{Principal: sysP, Time: baseTime.UnixNano()},
			&AppendAuditCmd{Entries: []AuditInput{benchAuditInput(i)}})
	})
}

// BenchmarkApplyAuditSingleBatch1Read: the same with a read after every
// batch, so every batch is committed on its own (the cost before group
// commit, now paid by the first read after a write).
func BenchmarkApplyAuditSingleBatch1Read(b *testing.B) {
	benchApplyRead(b, 1, 1, true, func(i int) []byte {
		return mustEncode(b, CmdAppendAudit, Header{Principal: sysP, Time: baseTime.UnixNano()},
			&AppendAuditCmd{Entries: []AuditInput{benchAuditInput(i)}})
	})
}

// BenchmarkApplyAuditGroup: 500 entries per command (the group commit's
// default batch); one op is one command, ns/entry is per entry.
func BenchmarkApplyAuditGroup(b *testing.B) {
	benchApply(b, 1, 500, func(i int) []byte {
		in := make([]AuditInput, 500)
		for j := range in {
			in[j] = benchAuditInput(i*500 + j)
			in[j].Action, in[j].Outcome = ActionAuthFailed, OutcomeFailure
			in[j].UserAgent, in[j].Error = "bench/1.0", "API key secret does not match"
		}
		return mustEncode(b, CmdAppendAudit, Header{Principal: sysP, Time: baseTime.UnixNano()}, &AppendAuditCmd{Entries: in})
	})
}

// BenchmarkApplyNoop: 32 noop commands per raft batch.
func BenchmarkApplyNoop(b *testing.B) {
	benchApply(b, 32, 1, func(i int) []byte {
		return mustEncode(b, CmdNoop, Header{Principal: sysP, Time: baseTime.UnixNano()}, nil)
	})
}

// BenchmarkApplyNoopBatch1: one noop command per raft batch (a bbolt
// transaction that only moves the applied index).
func BenchmarkApplyNoopBatch1(b *testing.B) {
	benchApply(b, 1, 1, func(i int) []byte {
		return mustEncode(b, CmdNoop, Header{Principal: sysP, Time: baseTime.UnixNano()}, nil)
	})
}
