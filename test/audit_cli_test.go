package test

import (
	"bytes"
	"os"
	"os/exec"
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
	tokenFile := filepath.Join(dir, "operator.token")
	p := &serverProc{id: "a1", http: loopback(ports[0]), logPath: filepath.Join(dir, "a1.stderr"),
		args: []string{"server", "-node-id", "a1", "-http-addr", loopback(ports[0]), "-raft-addr", loopback(ports[1]),
			"-join-token", testJoinToken, "-bootstrap", "-data-dir", filepath.Join(dir, "a1"), "-operator-token-file", tokenFile}}
	p.start(t)
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("server stderr:\n%s", tailLines(string(b), 40))
		}
	})
	var tok string
	waitFor(t, 30*time.Second, "the operator token file", func() bool {
		b, err := os.ReadFile(tokenFile)
		tok = strings.TrimSpace(string(b))
		return err == nil && strings.HasSuffix(string(b), "\n")
	})
	env := append(cleanEnv(), "ALLSOURCE_ADDR=http://"+p.http, "ALLSOURCE_TOKEN="+tok)
	run := func(env []string, args ...string) (string, string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	cli := func(args ...string) string {
		t.Helper()
		var out, stderr string
		var err error
		waitFor(t, 30*time.Second, "allsource "+strings.Join(args, " "), func() bool {
			out, stderr, err = run(env, args...)
			return err == nil || !strings.Contains(stderr, "not_leader")
		})
		if err != nil {
			t.Fatalf("allsource %s: %v: %s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	cli("tenant", "create", "acme")
	// A forged operator-looking token names no tenant: its refusal lands in
	// the cluster's chain.
	forged := append(cleanEnv(), "ALLSOURCE_ADDR=http://"+p.http, "ALLSOURCE_TOKEN=aso_forged-token-0123456789")
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
