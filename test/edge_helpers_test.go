package test

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/enforcement"
	"github.com/allsource/guard/internal/edge"
	"github.com/allsource/guard/kms"
)

// ---- edges ----

// edgeNode is one edge started in this process through internal/edge, with a
// fixed gossip port and data dir so a restart comes back as the same edge.
type edgeNode struct {
	cfg  edge.Config
	e    *edge.Edge
	logs *logSink
}

func (n *edgeNode) id() string                    { return n.cfg.NodeID }
func (n *edgeNode) addr() string                  { return n.e.HTTPAddr() }
func (n *edgeNode) edge() *enforcement.Edge       { return n.e.Edge() }
func (n *edgeNode) replica() *enforcement.Replica { return n.e.Edge().Replica() }

// newEdgeNode configures (and starts) an edge joined to the cluster's
// servers, proxying to upstream ("" for forward-auth only).
func newEdgeNode(t testing.TB, c *inprocCluster, id, upstream string, mut func(*edge.Config)) *edgeNode {
	t.Helper()
	var seeds []string
	for _, n := range c.nodes {
		seeds = append(seeds, n.addr())
	}
	sort.Strings(seeds)
	p := reservePorts(t, 2)
	n := &edgeNode{logs: c.logs}
	n.cfg = edge.Config{NodeID: id, DataDir: t.TempDir(), HTTPAddr: loopback(p[0]), GossipAddr: loopback(p[1]),
		Join: seeds, Upstream: upstream, JoinToken: testJoinToken, TrustedProxies: []string{"127.0.0.0/8"},
		LogLevel: "info", LogFormat: "text", Version: "system-test", FastGossip: true,
		AuditFlushInterval: 100 * time.Millisecond, UsageInterval: 200 * time.Millisecond}
	if mut != nil {
		mut(&n.cfg)
	}
	if err := n.cfg.Validate(); err != nil {
		t.Fatalf("edge config %s: %v", id, err)
	}
	n.start(t)
	t.Cleanup(n.stop)
	return n
}

func (n *edgeNode) start(t testing.TB) {
	t.Helper()
	e, err := edge.Start(n.cfg, n.logs.logger(n.cfg.NodeID))
	if err != nil {
		t.Fatalf("start edge %s: %v", n.cfg.NodeID, err)
	}
	n.e = e
}

func (n *edgeNode) stop() {
	if n.e != nil {
		_ = n.e.Close()
		n.e = nil
	}
}

func (n *edgeNode) restart(t testing.TB) {
	n.stop()
	n.start(t)
}

// edgeClient sends client requests through edges.
var edgeClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 64}}

// send makes one request through an edge with the given headers.
func send(t testing.TB, method, url string, kv ...string) *resp {
	t.Helper()
	r, err := trySend(method, url, kv...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func trySend(method, url string, kv ...string) (*resp, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	hr, err := edgeClient.Do(req)
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

// echoUpstream is the service behind the edges: it answers 200 with the
// identity headers it received.
func echoUpstream(t testing.TB) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		out := map[string]string{"path": r.URL.Path}
		for _, h := range enforcement.IdentityHeaders {
			out[h] = r.Header.Get(h)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(s.Close)
	return s
}

// ---- identity state ----

// identity creates tenants, users, API keys and IP rules through the
// servers' HTTP API as the operator, and logs users in, the way an
// administrator and clients do. The servers must share a KMS root key
// (shareRootKey) so that each can unwrap the pepper and signing keys.
type identity struct {
	tok        string // operator token
	api        *apiClient
	leaderAddr func(testing.TB) string
	last       uint64 // index of the newest acknowledged write
}

// shareRootKey gives the configured servers the same KMS root key
// and test-strength Argon2 (logins in milliseconds).
func shareRootKey(t testing.TB, nodes ...*inprocNode) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kms-root.key")
	if _, err := kms.InitLocalRootKey(path); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		n.cfg.KMSLocalKeyFile = path
		n.cfg.Identity.ArgonMemoryKiB, n.cfg.Identity.ArgonTime, n.cfg.Identity.AllowWeakArgon = 64, 1, true
	}
}

func newIdentity(t testing.TB, c *inprocCluster, tok string) *identity {
	return &identity{tok: tok, api: newAPIClient(scaled(10 * time.Second)),
		leaderAddr: func(t testing.TB) string { return c.leader(t).addr() }}
}

// waitEdgesCurrent waits until every edge's view reflects the newest write.
func (id *identity) waitEdgesCurrent(t testing.TB, edges ...*enforcement.Edge) {
	t.Helper()
	want := id.last
	waitFor(t, 20*time.Second, fmt.Sprintf("every edge to reach index %d", want), func() bool {
		for _, e := range edges {
			if v := e.Pipeline().View(); v == nil || v.Index < want {
				return false
			}
		}
		return true
	})
}

// call sends an operator request to the leader, retrying while the cluster
// answers 503 (a leader still loading its key material, an election), and
// fails the test unless the answer is want. It records the write's index.
func (id *identity) call(t testing.TB, want int, method, path string, body any) *resp {
	t.Helper()
	var r *resp
	waitFor(t, 20*time.Second, method+" "+path, func() bool {
		var err error
		r, err = id.api.call(method, id.leaderAddr(t), path, id.tok, body)
		return err == nil && r.Status != http.StatusServiceUnavailable
	})
	if r.Status != want {
		t.Fatalf("%s %s: want %d, got %s", method, path, want, r)
	}
	if i, ok := r.index(); ok {
		id.last = max(id.last, i)
	}
	return r
}

func (id *identity) createTenant(t testing.TB, tenant string, rpm, burst int) {
	t.Helper()
	id.call(t, http.StatusCreated, http.MethodPost, "/v1/tenants", map[string]string{"id": tenant, "tier": "unlimited"})
	if rpm > 0 {
		id.call(t, http.StatusOK, http.MethodPut, "/v1/tenants/"+tenant+"/rate-limit", map[string]int{"requests_per_minute": rpm, "burst": burst})
	}
}

func (id *identity) createAPIKey(t testing.TB, tenant string, role auth.Role) (raw, keyID string) {
	t.Helper()
	var out struct{ ID, Key string }
	id.call(t, http.StatusCreated, http.MethodPost, "/v1/tenants/"+tenant+"/api-keys",
		map[string]string{"name": "edge-test", "role": string(role)}).decode(t, &out)
	if out.Key == "" || out.ID == "" {
		t.Fatalf("create API key: no key in the answer")
	}
	return out.Key, out.ID
}

func (id *identity) revokeAPIKey(t testing.TB, tenant, keyID string) {
	t.Helper()
	id.call(t, http.StatusOK, http.MethodDelete, "/v1/tenants/"+tenant+"/api-keys/"+keyID, nil)
}

const testPassword = "correct-horse-battery-42"

// createUser creates a user and returns its id and username.
func (id *identity) createUser(t testing.TB, tenant string, role auth.Role) (string, string) {
	t.Helper()
	name := "u" + newID()[:10]
	var out struct{ ID string }
	id.call(t, http.StatusCreated, http.MethodPost, "/v1/tenants/"+tenant+"/users",
		map[string]string{"username": name, "password": testPassword, "role": string(role)}).decode(t, &out)
	return out.ID, name
}

// login signs a user in and returns the access token.
func (id *identity) login(t testing.TB, tenant, username string) string {
	t.Helper()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	var r *resp
	waitFor(t, 20*time.Second, "login of "+username, func() bool {
		var err error
		r, err = id.api.call(http.MethodPost, id.leaderAddr(t), "/v1/auth/login", "",
			map[string]string{"tenant": tenant, "username": username, "password": testPassword})
		return err == nil && r.Status != http.StatusServiceUnavailable
	})
	if r.Status != http.StatusOK {
		t.Fatalf("login: %s", r)
	}
	r.decode(t, &out)
	return out.AccessToken
}

func (id *identity) blockCIDR(t testing.TB, tenant, cidr string) {
	t.Helper()
	path := "/v1/ip-rules"
	if tenant != "" {
		path = "/v1/tenants/" + tenant + "/ip-rules"
	}
	id.call(t, http.StatusCreated, http.MethodPost, path, map[string]string{"cidr": cidr, "action": "block", "note": "edge test"})
}

func (id *identity) suspend(t testing.TB, tenant string) {
	t.Helper()
	id.call(t, http.StatusOK, http.MethodPost, "/v1/tenants/"+tenant+"/suspend", nil)
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ---- propagation ----

// propagation measures how long after a write's acknowledgement each edge's
// view reflects it: watchers spin on the edges' current views from before
// the write, and the delay is from the moment the leader acknowledged.
type propagation struct {
	mu     sync.Mutex
	seenAt map[string]time.Time
	wg     sync.WaitGroup
	stop   chan struct{}
}

func watchEdges(edges []*enforcement.Edge, names []string, reflected func(v *enforcement.View) bool) *propagation {
	p := &propagation{seenAt: map[string]time.Time{}, stop: make(chan struct{})}
	for i, e := range edges {
		p.wg.Add(1)
		go func(e *enforcement.Edge, name string) {
			defer p.wg.Done()
			for {
				if v := e.Pipeline().View(); v != nil && reflected(v) {
					p.mu.Lock()
					p.seenAt[name] = time.Now()
					p.mu.Unlock()
					return
				}
				select {
				case <-p.stop:
					return
				default:
				}
				time.Sleep(50 * time.Microsecond) // poll interval, fine because it bounds the delay measured
			}
		}(e, names[i])
	}
	return p
}

// wait returns each edge's delay after ack (negative values, an edge that
// saw the change before the leader's Apply returned, count as 0).
func (p *propagation) wait(t testing.TB, ack time.Time, n int) map[string]time.Duration {
	t.Helper()
	waitFor(t, 10*time.Second, "every edge to reflect the change", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.seenAt) == n
	})
	close(p.stop)
	p.wg.Wait()
	out := map[string]time.Duration{}
	for k, at := range p.seenAt {
		out[k] = max(at.Sub(ack), 0)
	}
	return out
}

func maxDelay(m map[string]time.Duration) time.Duration {
	var d time.Duration
	for _, v := range m {
		d = max(d, v)
	}
	return d
}

func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[i]
}

func fmtDelays(m map[string]time.Duration) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%v", k, v.Round(10*time.Microsecond)))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

type edgeConfig = edge.Config

func mustPrefixes(t testing.TB, cidrs ...string) []netip.Prefix {
	t.Helper()
	p, err := enforcement.ParseTrustedProxies(cidrs)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mustAddr(t testing.TB, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
