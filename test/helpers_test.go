package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The servers read ALLSOURCE_* variables (a bootstrap token, dev mode);
	// the tests decide every setting themselves.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "ALLSOURCE_") {
			os.Unsetenv(k)
		}
	}
	code := m.Run()
	cleanupBinary()
	os.Exit(code)
}

// timeoutScale stretches every wait: 4× on CI (shared, noisy machines, as
// Nomad does), 2× more under the race detector.
func timeoutScale() time.Duration {
	s := time.Duration(1)
	if os.Getenv("CI") != "" {
		s *= 4
	}
	if raceEnabled {
		s *= 2
	}
	return s
}

func scaled(d time.Duration) time.Duration { return d * timeoutScale() }

// waitFor polls cond until it holds, failing the test with what was awaited
// once the (scaled) timeout has passed.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(scaled(timeout))
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", scaled(timeout), what)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a settle delay
	}
}

// reservePorts returns n loopback ports that were free a moment ago: each
// was bound on TCP and UDP (gossip uses both) and released. Servers that are
// restarted need fixed addresses, so ":0" alone will not do.
//
// The ports come from below the kernel's ephemeral range, so that neither an
// outgoing connection nor another listener on ":0" takes one between its
// reservation and its use, and no port is handed out twice in one run.
func reservePorts(t testing.TB, n int) []int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 10000 {
			t.Fatalf("reserve %d ports: no free port found", n)
		}
		port := portLow + portRand.IntN(portHigh-portLow)
		if portsUsed[port] {
			continue
		}
		tl, err := net.Listen("tcp", loopback(port))
		if err != nil {
			continue
		}
		ul, err := net.ListenPacket("udp", loopback(port))
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		portsUsed[port] = true
		ports = append(ports, port)
	}
	return ports
}

// The port range reservePorts draws from: [20000, 32000), or the 12000
// ports below the ephemeral range when that starts lower.
var (
	portMu            sync.Mutex
	portsUsed         = map[int]bool{}
	portRand          = mathrand.New(mathrand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	portLow, portHigh = portRange()
)

func portRange() (int, int) {
	low, high := 20000, 32000
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var lo, hi int
		if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil && lo > 2048 && lo < high {
			high = lo
			low = max(1024, lo-12000)
		}
	}
	return low, high
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// logSink collects the log lines of every server in a test and prints the
// tail when the test fails. ALLSOURCE_TEST_VERBOSE=1 streams them instead.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

const logSinkMax = 8 << 20

func (s *logSink) Write(p []byte) (int, error) {
	if os.Getenv("ALLSOURCE_TEST_VERBOSE") != "" {
		return os.Stderr.Write(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buf.Len()+len(p) > logSinkMax {
		tail := append([]byte(nil), s.buf.Bytes()[s.buf.Len()/2:]...)
		s.buf.Reset()
		s.buf.Write(tail)
	}
	return s.buf.Write(p)
}

func (s *logSink) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return tailLines(s.buf.String(), n)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// newLogSink returns a sink whose tail is printed if t fails.
func newLogSink(t testing.TB) *logSink {
	s := &logSink{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last server log lines:\n%s", s.tail(150))
		}
	})
	return s
}

func (s *logSink) logger(node string) *slog.Logger {
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test_node", node)
}

// resp is one HTTP answer, read in full.
type resp struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r *resp) String() string {
	return fmt.Sprintf("%d %s", r.Status, bytes.TrimSpace(r.Body))
}

// index is the X-Raft-Index header (0 and false when absent).
func (r *resp) index() (uint64, bool) {
	v := r.Header.Get("X-Raft-Index")
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil
}

func (r *resp) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r, err)
	}
}

// apiClient talks to servers' HTTP APIs. It never follows redirects, so a
// 307 from ?redirect stays visible.
type apiClient struct {
	hc *http.Client
}

func newAPIClient(timeout time.Duration) *apiClient {
	return &apiClient{hc: &http.Client{
		Timeout:       timeout,
		Transport:     &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 16, DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// call sends one request; body is JSON-encoded unless it is a []byte.
func (c *apiClient) call(method, addr, path, token string, body any) (*resp, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://"+addr+path, rd)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hr, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer hr.Body.Close()
	b, err := io.ReadAll(hr.Body)
	if err != nil {
		return nil, err
	}
	return &resp{Status: hr.StatusCode, Header: hr.Header, Body: b}, nil
}

// must sends a request and fails the test on a transport error or a status
// other than want.
func (c *apiClient) must(t testing.TB, want int, method, addr, path, token string, body any) *resp {
	t.Helper()
	r, err := c.call(method, addr, path, token, body)
	if err != nil {
		t.Fatalf("%s http://%s%s: %v", method, addr, path, err)
	}
	if r.Status != want {
		t.Fatalf("%s http://%s%s: want %d, got %s", method, addr, path, want, r)
	}
	return r
}

// health is the part of GET /health the tests read.
type health struct {
	NodeID       string `json:"node_id"`
	Role         string `json:"role"`
	Leader       string `json:"leader"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
}

func (c *apiClient) health(addr string) (health, error) {
	var h health
	r, err := c.call(http.MethodGet, addr, "/health", "", nil)
	if err != nil {
		return h, err
	}
	if r.Status != http.StatusOK {
		return h, fmt.Errorf("health: %s", r)
	}
	return h, json.Unmarshal(r.Body, &h)
}

// member is one entry of GET /v1/cluster/members.
type member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
}

func (c *apiClient) members(addr, token string) ([]member, error) {
	r, err := c.call(http.MethodGet, addr, "/v1/cluster/members?consistency=stale", token, nil)
	if err != nil {
		return nil, err
	}
	if r.Status != http.StatusOK {
		return nil, fmt.Errorf("members: %s", r)
	}
	var out struct {
		Servers []member `json:"servers"`
	}
	return out.Servers, json.Unmarshal(r.Body, &out)
}

// voters reports how many servers addr sees as voters, and the total.
func voters(ms []member) (v, total int) {
	for _, m := range ms {
		if m.Suffrage == "voter" {
			v++
		}
	}
	return v, len(ms)
}

// contains reports whether any server logged s.
func (s *logSink) contains(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Contains(s.buf.Bytes(), []byte(sub))
}
