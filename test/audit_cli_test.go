package test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAuditCLI drives `allsource audit …` against a server process: a
// tenant's chain, the cluster's own chain (where a forged token's refusal is
// recorded), and verification.
func TestAuditCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	bin := allsourceBinary(t)
	dir := t.TempDir()
	ports := reservePorts(t, 2)
	p, env := operatorServer(t, dir, "a1", loopback(ports[0]), []string{"server", "-node-id", "a1",
		"-http-addr", loopback(ports[0]), "-raft-addr", loopback(ports[1]), "-join-token", testJoinToken,
		"-bootstrap", "-data-dir", filepath.Join(dir, "a1")})
	run := func(env []string, args ...string) (string, string, error) { return runBin(bin, "", env, args...) }
	must := cliMust(t, bin, env)
	cli := func(args ...string) string { t.Helper(); return must("", args...) }
	cli("tenant", "create", "acme")
	// A forged operator-looking token names no tenant: its refusal lands in
	// the cluster's chain.
	forged := []string{"ALLSOURCE_ADDR=http://" + p.http, "ALLSOURCE_TOKEN=aso_forged-token-0123456789"}
	if _, stderr, err := run(forged, "tenant", "list"); err == nil {
		t.Fatalf("tenant list with a forged token succeeded: %s", stderr)
	}
	waitFor(t, 30*time.Second, "the forged token's refusal in the cluster chain", func() bool {
		return strings.Contains(cli("audit", "query", "-cluster", "-action", "authentication_failed"), "authentication_failed")
	})
	if _, stderr, err := run(env, "audit", "query"); err == nil || !strings.Contains(stderr, "TENANT|-cluster") {
		t.Fatalf("audit query without a tenant: err %v, stderr %q", err, stderr)
	}
	if out := cli("audit", "query", "acme"); !strings.Contains(out, "tenant_created") || strings.Contains(out, "authentication_failed") {
		t.Fatalf("acme's chain should hold its creation and not the cluster's refusals:\n%s", out)
	}
	if out := cli("audit", "verify"); !strings.Contains(strings.ToLower(out), "ok") {
		t.Fatalf("audit verify:\n%s", out)
	}
}
