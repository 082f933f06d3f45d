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

// runBin runs the allsource binary in a clean environment plus env, with
// stdin, and returns what it printed.
func runBin(bin, stdin string, env []string, args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// operatorServer starts `allsource server` with args plus an operator token
// file in dir, waits for the token, and returns the process and the
// environment a CLI call needs to reach it as the operator. The process is
// killed when the test ends (its stderr logged if the test failed).
func operatorServer(t *testing.T, dir, id, httpAddr string, args []string) (*serverProc, []string) {
	t.Helper()
	tokenFile := filepath.Join(dir, id+".operator-token")
	p := &serverProc{id: id, http: httpAddr, logPath: filepath.Join(dir, id+".stderr"),
		args: append(append([]string(nil), args...), "-operator-token-file", tokenFile)}
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
	return p, []string{"ALLSOURCE_ADDR=http://" + httpAddr, "ALLSOURCE_TOKEN=" + tok}
}

// runBinSettled runs the CLI like runBin, again while the answer is one a
// just-started cluster gives (503 not_leader while it elects, 503
// unavailable while its key material loads); any other answer, success or
// failure, is returned.
func runBinSettled(t *testing.T, bin, stdin string, env []string, args ...string) (out, stderr string, err error) {
	t.Helper()
	waitFor(t, 30*time.Second, "allsource "+strings.Join(args, " ")+" to answer other than 503", func() bool {
		out, stderr, err = runBin(bin, stdin, env, args...)
		return err == nil || !strings.Contains(stderr, "not_leader") && !strings.Contains(stderr, "unavailable (503)")
	})
	return out, stderr, err
}

// cliMust returns a runner of CLI commands that must succeed; the first
// calls may meet the cluster still electing (503 not_leader) or its key
// material not loaded yet (503 unavailable) and are retried.
func cliMust(t *testing.T, bin string, env []string) func(stdin string, args ...string) string {
	return func(stdin string, args ...string) string {
		t.Helper()
		out, stderr, err := runBinSettled(t, bin, stdin, env, args...)
		if err != nil {
			t.Fatalf("allsource %s: %v: %s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
}
