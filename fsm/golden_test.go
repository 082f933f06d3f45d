package fsm

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// goldenLogs is a fixed log: the determinism test's generated commands, then
// audit appends to several chains in every envelope and payload form (v2
// binary, v2 with a JSON payload, v1 JSON), with noops between them.
func goldenLogs(t *testing.T) []*raft.Log {
	logs := genLogs(t, randChooser{rand.New(rand.NewPCG(7, 42))}, 400)
	r := rand.New(rand.NewPCG(3, 5))
	tenants := []string{"acme", "globex", "", "initech"}
	for i := uint64(len(logs) + 1); i <= 1400; i++ {
		h := Header{Principal: sysP, Time: baseTime.Add(time.Duration(i) * time.Second).UnixNano(),
			RequestID: fmt.Sprintf("r%d", i)}
		if r.IntN(10) == 0 {
			logs = append(logs, cmdLog(i, mustEncode(t, CmdNoop, h, nil)))
			continue
		}
		es := make([]AuditInput, 1+r.IntN(3)*r.IntN(3))
		for j := range es {
			es[j] = AuditInput{Tenant: tenants[r.IntN(len(tenants))], Time: baseTime.Add(time.Duration(i*10+uint64(j)) * time.Millisecond),
				Action: ActionAPIKeyUsed, Actor: Actor{Kind: PrincipalAPIKey, ID: fmt.Sprintf("k_%d", r.IntN(5)), Name: "ci", Role: "admin"},
				Resource: "/v1/orders", Outcome: OutcomeSuccess, IP: "203.0.113.7", UserAgent: "bench/1.0",
				RequestID: fmt.Sprintf("%024x", i*10+uint64(j))}
			if r.IntN(3) == 0 {
				es[j].Action, es[j].Outcome, es[j].Error = ActionAuthFailed, OutcomeFailure, "secret does not match"
			}
			if n := r.IntN(4); n > 0 {
				es[j].Metadata = map[string]string{}
				for k := range n {
					es[j].Metadata[fmt.Sprintf("m%d", k)] = fmt.Sprintf("v%d", r.IntN(100))
				}
			}
		}
		p := &AppendAuditCmd{Entries: es}
		switch r.IntN(8) {
		case 0:
			logs = append(logs, cmdLog(i, mustEncodeV1(t, CmdAppendAudit, h, p)))
		case 1:
			js, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Command{Type: CmdAppendAudit, Header: h, Payload: js}.Encode()
			if err != nil {
				t.Fatal(err)
			}
			logs = append(logs, cmdLog(i, b))
		default:
			logs = append(logs, cmdLog(i, mustEncode(t, CmdAppendAudit, h, p)))
		}
	}
	return logs
}

// digest is the hex SHA-256 of what a replica exposes after a run: its
// snapshot, its results, and the changes it delivered with their entries.
func digest(t *testing.T, rr runResult) (snap, results, changes string) {
	t.Helper()
	s := sha256.Sum256(rr.snap)
	h := sha256.New()
	for _, r := range rr.results {
		h.Write([]byte(r))
		h.Write([]byte{'\n'})
	}
	res := hex.EncodeToString(h.Sum(nil))
	h.Reset()
	for _, c := range rr.changes {
		b, err := json.Marshal(struct {
			C Change
			A *AuditEntry
		}{c, c.Audit})
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(s[:]), res, hex.EncodeToString(h.Sum(nil))
}

// TestApplyGolden: a fixed log applies to the same snapshot, results and
// changes as the releases before it did (the digests were taken before the
// apply path was optimised), one entry at a time and in grouped batches of
// any size. The log's bytes are overwritten before the changes are read, so
// what consumers keep must not alias raft's entries either.
func TestApplyGolden(t *testing.T) {
	const (
		wantSnap    = "6479d3047354f19658b3cd118bbd0483bb1c074b96d51794f99f90c477400101"
		wantResults = "0970b8d93f09da8279526fb07bb966014f5582b191052066ed21b2fad8e11a6c"
		wantChanges = "d51328a0a0ac06400f68f15a25195c069c3275c7c97de844ada2b6576e0f957a"
	)
	sizes := rand.New(rand.NewPCG(9, 9))
	for name, size := range map[string]func() int{
		"one by one": func() int { return 1 },
		"batches":    func() int { return 1 + sizes.IntN(8) },
		"large":      func() int { return 1 + sizes.IntN(200) },
	} {
		t.Run(name, func(t *testing.T) {
			logs := goldenLogs(t)
			rr := run(t, logs, size)
			for _, l := range logs {
				for i := range l.Data {
					l.Data[i] = 0xff
				}
			}
			s, r, c := digest(t, rr)
			if s != wantSnap || r != wantResults || c != wantChanges {
				t.Errorf("digests changed:\nsnapshot %s\nresults  %s\nchanges  %s", s, r, c)
			}
		})
	}
}
