//go:build linux

package faults

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Every container, network and image this suite creates carries these labels,
// so a run that crashed leaves nothing that the next run cannot find and
// remove: resources whose owner process is gone are deleted at start.
const (
	labelSuite = "allsource.faults"
	labelOwner = "allsource.faults.owner" // "<hostname>:<pid>" of the go test process
	namePrefix = "asfault"
)

func ownerLabel() string {
	h, _ := os.Hostname()
	return h + ":" + strconv.Itoa(os.Getpid())
}

// docker runs the docker CLI and returns its trimmed stdout.
func docker(ctx context.Context, args ...string) (string, error) {
	return dockerEnv(ctx, nil, args...)
}

// dockerEnv is docker with extra environment variables for the CLI process:
// secrets go to containers as `-e NAME` (value from this environment), so
// they never appear on a command line.
func dockerEnv(ctx context.Context, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return strings.TrimSpace(out.String()), fmt.Errorf("docker %s: %v: %s", strings.Join(redact(args), " "), err,
			strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

func redact(args []string) []string {
	if len(args) > 12 {
		return append(append([]string(nil), args[:12]...), "…")
	}
	return args
}

// nsenterRun runs a command inside the network namespace of process pid (a
// container's init). Scratch images have no shell or iptables of their own,
// so the host's tools do the work from outside.
func nsenterRun(ctx context.Context, pid int, args ...string) error {
	full := append([]string{"-t", strconv.Itoa(pid), "-n", "--"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nsenter -t %d -n %s: %v: %s", pid, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// requireEnvironment skips the test when Docker, root or the host tools are
// missing — unless CI is set, where a missing prerequisite is a failure.
func requireEnvironment(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("fault-injection suite: skipped in -short mode (make test-short is the fast tier)")
	}
	missing := environmentProblem()
	if missing == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("fault-injection suite cannot run (CI is set, so this is a failure): %s", missing)
	}
	t.Skipf("fault-injection suite skipped: %s (set CI=true to make this a failure)", missing)
}

var envOnce struct {
	sync.Once
	problem string
}

func environmentProblem() string {
	envOnce.Do(func() {
		if runtime.GOOS != "linux" {
			envOnce.problem = "needs Linux"
			return
		}
		if os.Geteuid() != 0 {
			envOnce.problem = "needs root (nsenter into container network namespaces)"
			return
		}
		for _, tool := range []string{"docker", "nsenter", "iptables"} {
			if _, err := exec.LookPath(tool); err != nil {
				envOnce.problem = tool + " is not installed (scripts/ci-fault-deps.sh installs the host tools)"
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := docker(ctx, "version", "--format", "{{.Server.Version}}"); err != nil {
			envOnce.problem = "Docker is not available: " + err.Error()
		}
	})
	return envOnce.problem
}

// removeLeftovers deletes containers and networks of earlier runs whose owner
// process no longer exists (a crashed or killed go test). Resources of a run
// still in progress — another package's test binary, a parallel make target —
// are left alone.
func removeLeftovers(ctx context.Context) {
	self, _ := os.Hostname()
	dead := func(owner string) bool {
		host, pidStr, ok := strings.Cut(owner, ":")
		if !ok || host != self {
			return false
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			return false
		}
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}
	list := func(kind string) map[string]string {
		out, err := docker(ctx, kind, "ls", "-a", "--filter", "label="+labelSuite, "--format",
			"{{.ID}} {{.Label \""+labelOwner+"\"}}")
		if kind == "network" {
			out, err = docker(ctx, kind, "ls", "--filter", "label="+labelSuite, "--format",
				"{{.ID}} {{.Label \""+labelOwner+"\"}}")
		}
		res := map[string]string{}
		if err != nil {
			return res
		}
		for _, line := range strings.Split(out, "\n") {
			if id, owner, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
				res[id] = owner
			}
		}
		return res
	}
	for id, owner := range list("container") {
		if dead(owner) {
			_, _ = docker(ctx, "rm", "-f", "-v", id)
		}
	}
	for id, owner := range list("network") {
		if dead(owner) {
			_, _ = docker(ctx, "network", "rm", id)
		}
	}
	if out, err := docker(ctx, "image", "ls", "--filter", "label="+labelSuite, "--format",
		"{{.ID}} {{.Repository}}:{{.Tag}}"); err == nil {
		for _, line := range strings.Split(out, "\n") {
			_, ref, ok := strings.Cut(strings.TrimSpace(line), " ")
			// Image tags carry the owner pid: asfault-<pid>-<rand>:latest.
			if ok && strings.HasPrefix(ref, namePrefix+"-") {
				parts := strings.SplitN(strings.TrimPrefix(ref, namePrefix+"-"), "-", 2)
				if len(parts) == 2 && dead(self+":"+parts[0]) {
					_, _ = docker(ctx, "rmi", "-f", ref)
				}
			}
		}
	}
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), namePrefix+"-*"))
	for _, m := range matches {
		parts := strings.SplitN(strings.TrimPrefix(filepath.Base(m), namePrefix+"-"), "-", 2)
		if len(parts) == 2 && dead(self+":"+parts[0]) {
			_ = os.RemoveAll(m)
		}
	}
}

// runID names this test process's resources: asfault-<pid>-<random>.
var runID = func() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", namePrefix, os.Getpid(), hex.EncodeToString(b[:]))
}()

// image is the suite's Docker image, built once per test process from the
// repository: the static binaries with CGO_ENABLED=0, then `docker build`
// with the repository's own Dockerfile, so the image under test is the one
// `make docker` ships.
var image struct {
	sync.Once
	tag string
	err error
	dir string
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", errors.New("go.mod not found above " + wd)
		}
	}
}

func buildImage(t *testing.T) string {
	t.Helper()
	image.Do(func() {
		start := time.Now()
		image.tag, image.err = doBuildImage()
		if image.err == nil {
			t.Logf("built image %s in %v", image.tag, time.Since(start).Round(100*time.Millisecond))
		}
	})
	if image.err != nil {
		t.Fatalf("build the test image: %v", image.err)
	}
	return image.tag
}

func doBuildImage() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	ctxDir, err := os.MkdirTemp("", runID+"-image-")
	if err != nil {
		return "", err
	}
	image.dir = ctxDir
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, b := range []struct{ out, pkg string }{{"bin/allsource", "./cmd/allsource"}, {"bin/upstream", "./examples/upstream"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=faults",
			"-o", filepath.Join(ctxDir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %v: %s", b.pkg, err, out)
		}
	}
	for _, d := range []string{"bin/docker-rootfs/data", "bin/docker-rootfs/tmp"} {
		if err := os.MkdirAll(filepath.Join(ctxDir, d), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(filepath.Join(ctxDir, "bin/docker-rootfs/tmp"), 0o1777); err != nil {
		return "", err
	}
	df, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), df, 0o644); err != nil {
		return "", err
	}
	tag := runID + ":latest"
	if _, err := docker(ctx, "build", "-q", "--label", labelSuite+"=1", "--label", labelOwner+"="+ownerLabel(),
		"-t", tag, ctxDir); err != nil {
		return "", err
	}
	return tag, nil
}

func removeImage() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if image.tag != "" {
		_, _ = docker(ctx, "rmi", "-f", image.tag)
	}
	if image.dir != "" {
		_ = os.RemoveAll(image.dir)
	}
}

// network is a private Docker bridge network with a /24 of 10.0.0.0/8 that
// no other network on the host uses.
type network struct {
	name    string
	subnet  netip.Prefix
	gateway netip.Addr
}

func createNetwork(t *testing.T, ctx context.Context, name string) *network {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		a, _ := rand.Int(rand.Reader, big.NewInt(120))
		b, _ := rand.Int(rand.Reader, big.NewInt(256))
		subnet := netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 100+a.Int64(), b.Int64()))
		gw := subnet.Addr().Next()
		_, err := docker(ctx, "network", "create", "--driver", "bridge", "--subnet", subnet.String(),
			"--gateway", gw.String(), "--label", labelSuite+"=1", "--label", labelOwner+"="+ownerLabel(), name)
		if err == nil {
			n := &network{name: name, subnet: subnet, gateway: gw}
			t.Cleanup(func() {
				cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if _, err := docker(cctx, "network", "rm", name); err != nil {
					t.Logf("cleanup: %v", err)
				}
			})
			return n
		}
		lastErr = err
		if !strings.Contains(err.Error(), "overlap") {
			break
		}
	}
	t.Fatalf("create network %s: %v", name, lastErr)
	return nil
}

// host returns the n-th address of the network (n ≥ 2; .1 is the gateway, the host).
func (n *network) host(i int) netip.Addr {
	a := n.subnet.Addr().As4()
	a[3] = byte(i)
	return netip.AddrFrom4(a)
}
