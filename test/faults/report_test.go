//go:build linux

package faults

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// report prints the summary table (markdown, as FAULTS.md records it) and
// appends it to $FAULTS_REPORT when set.
func report(t *testing.T, rows []*result, timings raftTimings, edgesNote string, took time.Duration) {
	t.Helper()
	var b strings.Builder
	tier := "short"
	if long() {
		tier = "LONG"
	}
	fmt.Fprintf(&b, "\n### %s tier, %s, raft timings: %s (took %v)\n\n", tier, time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		timings, took.Round(time.Second))
	b.WriteString("| scenario | faults | ops issued | acked | ambiguous | lin. violations | stale-read regressions | acked writes lost | audit chains + node agreement | valid edge requests failed | leader loss → first acked write (min / median / max) | isolated leader steps down | cut-off leader acks | elections (leader changes) | load avg |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		edge := "n/a"
		if r.EdgeRequests >= 0 {
			edge = fmt.Sprintf("%d of %d; revoked key accepted %d×, refused by every edge %v after its revocation",
				r.EdgeFailures, r.EdgeRequests, r.EdgeRevokedAccepted, r.EdgePropagation.Round(time.Millisecond))
		}
		lin := fmt.Sprint(r.Lin.Violations)
		if r.Lin.Unknown > 0 {
			lin += fmt.Sprintf(" (%d undecided)", r.Lin.Unknown)
		}
		agree := "✓"
		if !r.AuditOK || !r.Agree {
			agree = fmt.Sprintf("✗ (audit %v, agree %v)", r.AuditOK, r.Agree)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d (%d writes) | %d (%d committed) | %s (of %d ops) | %d (of %d) | %d | %s | %s | %s | %s | %d | %d (%d) | %s |\n",
			r.Scenario, r.Faults, r.Ops, r.Acked, r.AckedWrites, r.Ambiguous, r.AmbiguousCommitted, lin, r.Lin.Checked,
			r.StaleViolations, r.StaleReads, r.Lost+r.Misplaced, agree, edge, durations(r.Recovery), durations(r.StepDown),
			r.IsolatedAcks, r.Elections, r.LeaderChanges, r.Load)
	}
	if edgesNote != "" {
		fmt.Fprintf(&b, "\nEdge checks not run: %s.\n", edgesNote)
	}
	t.Log(b.String())
	if p := os.Getenv("FAULTS_REPORT"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Errorf("FAULTS_REPORT: %v", err)
			return
		}
		defer f.Close()
		_, _ = f.WriteString(b.String())
	}
}
