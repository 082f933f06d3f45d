package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/server"
)

const joinToken = "test-join-token-123456"

// waitTimeout bounds every wait on a condition.
const waitTimeout = 30 * time.Second

// poll waits until cond holds, failing the test after timeout.
func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// testServer is one real single-node server (fsm + raft + api).
type testServer struct {
	t      *testing.T
	srv    *server.Server
	base   string
	token  string // the operator token ("" in dev mode)
	client *http.Client
}

// startServer starts a bootstrapped single-node server and waits until it
// leads, has caught up and (outside dev mode) handed out the operator token.
func startServer(t *testing.T, dev bool) *testServer {
	t.Helper()
	t.Setenv("ALLSOURCE_BOOTSTRAP_TOKEN", "") // the token must be generated and handed to us
	tokCh := make(chan string, 1)
	cfg := server.Config{NodeID: "n1", DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, JoinToken: joinToken, QuietToken: true, Dev: dev, LogFormat: "text", MaxBodyBytes: 64 << 10,
		OnOperatorToken: func(tok string) { tokCh <- tok },
		// These tests assert that refused requests commit nothing but their
		// audit; threat detection answers repeated refusals with anomalies by
		// design (it has its own tests in test/threat_*).
		Threat: server.ThreatConfig{Disabled: true}}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	srv, err := server.Start(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	ts := &testServer{t: t, srv: srv, base: "http://" + srv.HTTPAddr(),
		client: &http.Client{Timeout: 30 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	select {
	case ts.token = <-tokCh:
	case <-time.After(waitTimeout):
		t.Fatal("no operator token within the timeout")
	}
	poll(t, waitTimeout, "the node to lead and catch up", func() bool {
		var h api.Health
		resp, body := ts.do("GET", "/health", "", nil)
		return resp.StatusCode == 200 && json.Unmarshal(body, &h) == nil && h.Role == "leader" && srv.Node().CaughtUp()
	})
	poll(t, waitTimeout, "the identity key material", func() bool { // pepper and signing key, made by the leader
		ks, active := srv.Secrets().SigningKeys()
		return srv.Secrets().Pepper() != nil && ks != nil && active != nil
	})
	if dev {
		poll(t, waitTimeout, "dev-tenant", func() bool {
			var ok bool
			_ = srv.FSM().View(func(r *fsm.Reader) error { _, ok = r.Tenant("dev-tenant"); return nil })
			return ok
		})
	}
	return ts
}

// do sends a request; hdr values are set as given ("Authorization": "Bearer …").
func (ts *testServer) do(method, path, body string, hdr map[string]string) (*http.Response, []byte) {
	ts.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return ts.doReader(method, path, rd, hdr)
}

func (ts *testServer) doReader(method, path string, body io.Reader, hdr map[string]string) (*http.Response, []byte) {
	ts.t.Helper()
	req, err := http.NewRequest(method, ts.base+path, body)
	if err != nil {
		ts.t.Fatalf("NewRequest %s %s: %v", method, path, err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, b
}

func (ts *testServer) op() map[string]string {
	return map[string]string{"Authorization": "Bearer " + ts.token}
}

// mustOK sends an operator request that must answer want.
func (ts *testServer) mustOK(method, path, body string, want int) []byte {
	ts.t.Helper()
	resp, b := ts.do(method, path, body, ts.op())
	if resp.StatusCode != want {
		ts.t.Fatalf("%s %s: status %d, want %d; body %s", method, path, resp.StatusCode, want, b)
	}
	return b
}

// state is what a refused request must not change.
type state struct {
	lastIndex, applied uint64
	tenants            string
	snapshot           []byte
	rest               string // the state outside the audit log
}

func (ts *testServer) state() state {
	ts.t.Helper()
	// Let the audit batcher and raft settle first: an entry proposed before
	// (the previous request's refusal audit) and applied between two
	// captures would look like a change made by the refused request.
	poll(ts.t, waitTimeout, "the server to settle", func() bool {
		return ts.srv.API().AuditIdle() && ts.srv.FSM().AppliedIndex() == ts.srv.Node().LastIndex()
	})
	var s state
	s.lastIndex = ts.srv.Node().LastIndex()
	s.applied = ts.srv.FSM().AppliedIndex()
	_ = ts.srv.FSM().View(func(r *fsm.Reader) error {
		list, _ := r.Tenants("", 1000)
		b, _ := json.Marshal(list)
		s.tenants = string(b)
		return nil
	})
	var buf bytes.Buffer
	if err := ts.srv.FSM().WriteSnapshotTo(&buf); err != nil {
		ts.t.Fatalf("WriteSnapshotTo: %v", err)
	}
	s.snapshot = buf.Bytes()
	s.rest = ts.nonAudit()
	return s
}

func (ts *testServer) unchanged(before state, what string) {
	ts.t.Helper()
	after := ts.state()
	if after.lastIndex != before.lastIndex && ts.onlyRefusalAudit(before, what) { // identity_helpers_test.go
		return
	}
	switch {
	case after.lastIndex != before.lastIndex:
		ts.t.Errorf("%s: raft last index moved from %d to %d (something was proposed)", what, before.lastIndex, after.lastIndex)
	case after.applied != before.applied:
		ts.t.Errorf("%s: applied index moved from %d to %d", what, before.applied, after.applied)
	case after.tenants != before.tenants:
		ts.t.Errorf("%s: tenant list changed:\n%s\n%s", what, before.tenants, after.tenants)
	case !bytes.Equal(after.snapshot, before.snapshot):
		ts.t.Errorf("%s: state changed", what)
	}
}

// errorBody is the one error shape of the API, decoded strictly.
type errorBody struct {
	Error struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"request_id"`
	} `json:"error"`
}

// checkError asserts the status, the JSON error shape and code, and that no
// secret appears in the answer.
func checkError(t *testing.T, what string, resp *http.Response, body []byte, status int, code string, secrets ...string) errorBody {
	t.Helper()
	var e errorBody
	if resp.StatusCode != status {
		t.Errorf("%s: status %d, want %d; body %s", what, resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		t.Errorf("%s: body is not the JSON error shape: %v; body %q", what, err, body)
		return e
	}
	if e.Error.Code != code {
		t.Errorf("%s: code %q (%s), want %q", what, e.Error.Code, e.Error.Message, code)
	}
	if e.Error.Message == "" {
		t.Errorf("%s: empty error message", what)
	}
	if e.Error.RequestID == "" || e.Error.RequestID != resp.Header.Get("X-Request-ID") {
		t.Errorf("%s: request_id %q, header X-Request-ID %q: want the same, non-empty", what, e.Error.RequestID, resp.Header.Get("X-Request-ID"))
	}
	for _, s := range secrets {
		if s != "" && (bytes.Contains(body, []byte(s)) || headerContains(resp.Header, s)) {
			t.Errorf("%s: the answer echoes a credential", what)
		}
	}
	return e
}

func headerContains(h http.Header, s string) bool {
	for _, vs := range h {
		for _, v := range vs {
			if strings.Contains(v, s) {
				return true
			}
		}
	}
	return false
}
