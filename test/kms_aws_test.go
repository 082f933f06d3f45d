package test

import (
	"bufio"
	"encoding/json"
	"go/build"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/api"
)

// The aws backend wired through the servers, against the local-kms emulator
// (scripts/ci-kms-deps.sh installs it; without it these tests are skipped,
// and fail under CI=true). Credentials and region reach the backend through
// the standard AWS configuration chain (environment variables).

const localKMSInstall = "go install github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6"

func localKMSBin(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("local-kms"); err == nil {
		return p
	}
	for _, gp := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(gp, "bin", "local-kms")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("local-kms not installed: %s", localKMSInstall)
	}
	t.Skipf("local-kms not installed; to run this test: %s", localKMSInstall)
	return ""
}

var localKMSStarted = regexp.MustCompile(`Local KMS started on [^ ]*:(\d+)`)

// startLocalKMS runs the emulator on port (0: any free port) until the test
// ends and returns its endpoint once it answers.
func startLocalKMS(t testing.TB, port int) string {
	t.Helper()
	bin := localKMSBin(t)
	dir := t.TempDir()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "KMS_REGION=eu-west-2", "KMS_ACCOUNT_ID=111122223333",
		"KMS_DATA_PATH="+filepath.Join(dir, "data"), "KMS_SEED_PATH="+filepath.Join(dir, "no-seed.yaml"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	portc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := localKMSStarted.FindStringSubmatch(sc.Text()); m != nil {
				portc <- m[1]
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	var p string
	select {
	case p = <-portc:
	case <-time.After(scaled(30 * time.Second)):
		t.Fatal("local-kms did not report its port")
	}
	addr := net.JoinHostPort("127.0.0.1", p)
	waitFor(t, 30*time.Second, "local-kms to accept connections", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return "http://" + addr
}

// awsEnv makes the standard AWS chain find local-kms's region and (ignored)
// credentials, and never look for instance credentials.
func awsEnv(t *testing.T) {
	t.Setenv("AWS_REGION", "eu-west-2")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDLOCALKMSTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local-kms-ignores-the-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

func TestKMSAWSBackendThroughServers(t *testing.T) {
	awsEnv(t)
	endpoint := startLocalKMS(t, 0)
	e := idCluster(t, 3, func(nd *inprocNode) {
		nd.cfg.KMS.Backend = "aws"
		nd.cfg.KMS.AWSEndpoint = endpoint
	})
	op := e.opCred()
	e.must(201, 0, "POST", "/v1/tenants", op, map[string]string{"id": "acme", "name": "acme", "tier": "professional"}, nil)
	dev := cred{name: "acme/developer", apiKey: e.createKey("acme", op, "dev", "developer", "").Key}
	admin := cred{name: "acme/admin", apiKey: e.createKey("acme", op, "adm", "admin", "").Key}

	var kv api.KMSKeyView
	e.must(201, 1, "POST", "/v1/kms/keys", admin, map[string]any{"name": "cards"}, &kv)
	if kv.Backend != "aws" || kv.Versions[0].Ref != "" {
		t.Fatalf("tenant view of the aws key = %+v (the ARN is for the operator only)", kv)
	}
	e.must(200, 1, "GET", "/v1/kms/keys/cards?tenant=acme", op, nil, &kv)
	if !strings.HasPrefix(kv.Versions[0].Ref, "arn:aws:kms:eu-west-2:111122223333:key/") {
		t.Fatalf("operator view of the aws key = %+v", kv)
	}
	e.waitKMSKey("acme/cards", 1)
	c1 := e.kmsEncrypt(1, dev, "cards", "4111 1111 1111 1111", kmsCtx{Field: "pan"})
	if got := e.kmsDecrypt(2, dev, c1.Ciphertext, kmsCtx{Field: "pan"}); got != "4111 1111 1111 1111" {
		t.Fatalf("decrypt on another server = %q", got)
	}
	e.must(200, 0, "POST", "/v1/kms/keys/cards/rotate", admin, nil, &kv)
	e.waitKMSKey("acme/cards", 2)
	var rw kmsItem
	e.must(200, 2, "POST", "/v1/kms/rewrap", dev, map[string]any{"ciphertext": c1.Ciphertext, "context": kmsCtx{Field: "pan"}}, &rw)
	if rw.KeyVersion != 2 {
		t.Fatalf("rewrap = %+v", rw)
	}
	e.must(200, 0, "PATCH", "/v1/kms/keys/cards", admin, map[string]any{"min_decryption_version": 2}, &kv)
	e.waitKMSKey("acme/cards", 3)
	if r := e.call(1, "POST", "/v1/kms/decrypt", dev, map[string]any{"ciphertext": c1.Ciphertext, "context": kmsCtx{Field: "pan"}}); r.status != 400 {
		t.Fatalf("retired version: %s, want 400", r)
	}
	if got := e.kmsDecrypt(0, dev, rw.Ciphertext, kmsCtx{Field: "pan"}); got != "4111 1111 1111 1111" {
		t.Fatalf("rewrapped = %q", got)
	}
	var h api.Health
	e.must(200, 2, "GET", "/health", cred{}, nil, &h)
	if len(h.KMS) != 2 || h.KMS[1].Backend != "aws" || !h.KMS[1].OK || !h.KMS[1].Default {
		t.Fatalf("health kms = %+v", h.KMS)
	}
}

// TestKMSRemoteBackendDownAtStart: a server whose AWS KMS endpoint does not
// answer starts anyway, says so in /health, keeps serving what does not need
// it (logins, local keys), answers 503 for the aws backend, and picks the
// backend up once it appears.
func TestKMSRemoteBackendDownAtStart(t *testing.T) {
	awsEnv(t)
	localKMSBin(t) // skip early without the emulator
	port := reservePorts(t, 1)[0]
	endpoint := "http://" + loopback(port)
	e := idCluster(t, 1, func(nd *inprocNode) {
		nd.cfg.KMS.Backend = "aws"
		nd.cfg.KMS.AWSEndpoint = endpoint
		nd.cfg.KMS.AWSTimeout = 2 * time.Second
		nd.cfg.KMS.CheckEvery = 100 * time.Millisecond
	})
	op := e.opCred()
	var h api.Health
	waitFor(t, 30*time.Second, "health to report the aws backend down", func() bool {
		e.must(200, 0, "GET", "/health", cred{}, nil, &h)
		return len(h.KMS) == 2 && h.KMS[1].Backend == "aws" && !h.KMS[1].OK && h.KMS[1].Error != "" && !h.KMS[1].CheckedAt.IsZero()
	})
	if h.Status != "ok" {
		t.Fatalf("health status %q with the KMS down, want ok", h.Status)
	}
	e.must(200, 0, "GET", "/ready", cred{}, nil, nil)
	// Everything that does not need the backend works: tenants, users, logins, local keys.
	e.must(201, 0, "POST", "/v1/tenants", op, map[string]string{"id": "acme", "name": "acme", "tier": "free"}, nil)
	e.createUser("acme", "ann", "admin")
	tok := e.login("acme", "ann", "pw-ann-correct-horse")
	ann := bearerCred("ann", tok.AccessToken)
	e.must(201, 0, "POST", "/v1/kms/keys", ann, map[string]any{"name": "local-key", "backend": "local"}, nil)
	c := e.kmsEncrypt(0, ann, "local-key", "x", kmsCtx{Field: "f"})
	if got := e.kmsDecrypt(0, ann, c.Ciphertext, kmsCtx{Field: "f"}); got != "x" {
		t.Fatalf("local key with the remote backend down: %q", got)
	}
	r := e.call(0, "POST", "/v1/kms/keys", ann, map[string]any{"name": "aws-key"})
	if r.status != 503 || errCode(t, r) != "unavailable" {
		t.Fatalf("creating an aws key with the backend down: %s, want 503", r)
	}
	var body struct{ Error struct{ Message string } }
	if err := json.Unmarshal(r.body, &body); err != nil {
		t.Fatalf("creating an aws key with the backend down: %v (%s)", err, r)
	}
	if strings.Contains(body.Error.Message, "127.0.0.1") {
		t.Fatalf("the backend's address leaked into the answer: %s", r)
	}

	// The backend comes up: the server notices and uses it.
	startLocalKMS(t, port)
	waitFor(t, 30*time.Second, "health to report the aws backend up", func() bool {
		e.must(200, 0, "GET", "/health", cred{}, nil, &h)
		return len(h.KMS) == 2 && h.KMS[1].OK
	})
	var kv api.KMSKeyView
	e.must(201, 0, "POST", "/v1/kms/keys", ann, map[string]any{"name": "aws-key"}, &kv)
	if kv.Backend != "aws" {
		t.Fatalf("key = %+v", kv)
	}
	c = e.kmsEncrypt(0, ann, "aws-key", "y", kmsCtx{Field: "f"})
	if got := e.kmsDecrypt(0, ann, c.Ciphertext, kmsCtx{Field: "f"}); got != "y" {
		t.Fatalf("aws key once the backend is up: %q", got)
	}
	if !strings.Contains(e.c.logs.tail(2000), "the KMS backend cannot be reached") {
		t.Error("no log line saying the KMS backend cannot be reached")
	}
}
