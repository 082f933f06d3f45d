package test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The allsource binary is built once per test run, into a directory that
// TestMain removes at the end.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func allsourceBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			binErr = fmt.Errorf("the go tool is not on PATH: %w", err)
			return
		}
		out, err := exec.Command(goTool, "env", "GOMOD").Output()
		if err != nil {
			binErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		gomod := strings.TrimSpace(string(out))
		if gomod == "" || gomod == os.DevNull {
			binErr = fmt.Errorf("not inside the module (go env GOMOD = %q)", gomod)
			return
		}
		if binDir, err = os.MkdirTemp("", "allsource-systest-"); err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(binDir, "allsource")
		build := exec.Command(goTool, "build", "-o", binPath, "./cmd/allsource")
		build.Dir = filepath.Dir(gomod)
		if out, err := build.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/allsource: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func cleanupBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// serverProc is one `allsource server` process. Its stderr goes to a file in
// the test's temp dir (appended to across restarts); the tail is printed if
// the test fails.
type serverProc struct {
	id      string
	http    string
	args    []string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startProc starts (or restarts) the process with its fixed arguments.
func (p *serverProc) start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "=== %s: allsource %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(p.args, " "))
	cmd := exec.Command(allsourceBinary(t), p.args...)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = logf, logf
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", p.id, err)
	}
	logf.Close() // the child holds its own descriptor
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(p.exited)
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *serverProc) kill(t testing.TB) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Errorf("%s (pid %d) did not exit after SIGKILL", p.id, p.cmd.Process.Pid)
	}
	p.cmd = nil
}

func (p *serverProc) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// cleanEnv is the test's environment without ALLSOURCE_* variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ALLSOURCE_") {
			env = append(env, kv)
		}
	}
	return env
}

// TestClusterProcesses runs three `allsource server` processes on loopback:
// node 1 bootstraps, node 2 joins through node 1 and node 3 through node 2
// (one seed address each). The leader is killed with SIGKILL, writes resume
// through the survivors, and the killed server, restarted with the same flags
// and data dir, rejoins and catches up.
func TestClusterProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	allsourceBinary(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "operator.token")
	procs := map[string]*serverProc{}
	var order []*serverProc
	api := newAPIClient(scaled(10 * time.Second))
	var tok string
	t.Cleanup(func() {
		if t.Failed() {
			// What each server thought of the cluster when the test gave up.
			for _, p := range order {
				if !p.running() {
					continue
				}
				show := func(path, token string) string {
					r, err := api.call(http.MethodGet, p.http, path, token, nil)
					if err != nil {
						return err.Error()
					}
					return r.String()
				}
				t.Logf("--- %s: health %s; members %s", p.id, show("/health", ""),
					show("/v1/cluster/members?consistency=stale", tok))
			}
		}
		for _, p := range order {
			p.kill(t)
		}
		if t.Failed() {
			for _, p := range order {
				b, _ := os.ReadFile(p.logPath)
				t.Logf("--- last stderr lines of %s (%s):\n%s", p.id, p.logPath, tailLines(string(b), 80))
			}
		}
	})
	add := func(id string, extra ...string) *serverProc {
		ports := reservePorts(t, 3)
		p := &serverProc{id: id, http: loopback(ports[0]), logPath: filepath.Join(dir, id+".stderr")}
		p.args = append([]string{"server", "-node-id", id, "-data-dir", filepath.Join(dir, id),
			"-http-addr", p.http, "-raft-addr", loopback(ports[1]), "-gossip-addr", loopback(ports[2]),
			"-join-token", testJoinToken}, extra...)
		procs[id] = p
		order = append(order, p)
		return p
	}

	n1 := add("n1", "-bootstrap", "-operator-token-file", tokenFile)
	n1.start(t)
	waitFor(t, 30*time.Second, "n1 to write the operator token file", func() bool {
		b, err := os.ReadFile(tokenFile)
		tok = strings.TrimSpace(string(b))
		return err == nil && strings.HasSuffix(string(b), "\n") && tok != ""
	})
	n2 := add("n2", "-join", n1.http)
	n2.start(t)
	n3 := add("n3", "-join", n2.http) // a seed that is itself a follower
	n3.start(t)

	waitVoters := func(n int) {
		t.Helper()
		for _, p := range order {
			waitFor(t, 30*time.Second, fmt.Sprintf("%s to see %d voters", p.id, n), func() bool {
				ms, err := api.members(p.http, tok)
				v, total := voters(ms)
				return err == nil && v == n && total == n
			})
		}
	}
	waitVoters(3)

	leaderOf := func() *serverProc {
		t.Helper()
		var l *serverProc
		waitFor(t, 20*time.Second, "every running server to agree on one leader", func() bool {
			l = nil
			id := ""
			for _, p := range order {
				if !p.running() {
					continue
				}
				h, err := api.health(p.http)
				if err != nil || h.Leader == "" || (id != "" && h.Leader != id) {
					return false
				}
				id = h.Leader
				if h.Role == "leader" {
					l = p
				}
			}
			return l != nil && l.id == id
		})
		return l
	}

	api.must(t, http.StatusCreated, http.MethodPost, n3.http, "/v1/tenants", tok,
		map[string]string{"id": "proc-before", "name": "Before the kill"})

	victim := leaderOf()
	var survivors []*serverProc
	for _, p := range order {
		if p != victim {
			survivors = append(survivors, p)
		}
	}
	killed := time.Now()
	victim.kill(t)
	quick := newAPIClient(scaled(2 * time.Second))
	attempts := 0
	waitFor(t, 30*time.Second, "a write acknowledged through a survivor after the leader was killed", func() bool {
		attempts++
		p := survivors[attempts%len(survivors)]
		r, err := quick.call(http.MethodPost, p.http, "/v1/tenants", tok,
			map[string]string{"id": fmt.Sprintf("proc-failover-%d", attempts), "name": "After the kill"})
		return err == nil && r.Status == http.StatusCreated
	})
	t.Logf("leader %s killed with SIGKILL: first write acknowledged after %v (%d attempts)",
		victim.id, time.Since(killed).Round(time.Millisecond), attempts)
	var downTenants []string
	for i, p := range survivors {
		id := fmt.Sprintf("proc-while-down-%d", i)
		api.must(t, http.StatusCreated, http.MethodPost, p.http, "/v1/tenants", tok,
			map[string]string{"id": id, "name": "Written while a server was down"})
		downTenants = append(downTenants, id)
	}
	leader := leaderOf()
	lh, err := api.health(leader.http)
	if err != nil {
		t.Fatal(err)
	}

	victim.start(t) // same flags, same data dir
	waitFor(t, 30*time.Second, victim.id+" to catch up with the leader's applied index", func() bool {
		h, err := api.health(victim.http)
		return err == nil && h.AppliedIndex >= lh.AppliedIndex
	})
	for _, id := range downTenants {
		waitFor(t, 10*time.Second, victim.id+" to serve "+id+" with a stale read", func() bool {
			r, err := api.call(http.MethodGet, victim.http, "/v1/tenants/"+id+"?consistency=stale", tok, nil)
			return err == nil && r.Status == http.StatusOK
		})
	}
	waitVoters(3)
	// It forwards writes again, so it knows the leader over gossip.
	waitFor(t, 20*time.Second, "a write through the restarted "+victim.id, func() bool {
		r, err := quick.call(http.MethodPost, victim.http, "/v1/tenants", tok,
			map[string]string{"id": "proc-after-restart", "name": "Through the restarted server"})
		return err == nil && (r.Status == http.StatusCreated || r.Status == http.StatusConflict)
	})
	api.must(t, http.StatusOK, http.MethodGet, n1.http, "/v1/tenants/proc-after-restart?consistency=linearizable", tok, nil)
}
