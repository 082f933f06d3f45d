package test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/enforcement"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/edge"
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
		AuditFlushInterval: 100 * time.Millisecond}
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

// identity creates users, API keys, signing keys and IP rules on the
// cluster. It proposes the state machine's commands on the leader as the
// operator (what the identity API does after its checks), and holds the
// API-key pepper the servers hand to edges.
type identity struct {
	c      *inprocCluster
	tok    string // operator token
	pepper []byte
	p      *auth.Pepper
	signer *auth.SigningKey
	api    *apiClient
	last   uint64 // index of the newest acknowledged write
}

// waitEdgesCurrent waits until every edge's view reflects the newest write.
func (id *identity) waitEdgesCurrent(t testing.TB, edges ...*enforcement.Edge) {
	t.Helper()
	want := id.last
	for _, n := range id.c.running() {
		want = max(want, n.srv.Node().AppliedIndex())
	}
	waitFor(t, 20*time.Second, fmt.Sprintf("every edge to reach index %d", want), func() bool {
		for _, e := range edges {
			if v := e.Pipeline().View(); v == nil || v.Index < want {
				return false
			}
		}
		return true
	})
}

type staticSecrets struct{ pepper []byte }

func (s staticSecrets) APIKeyPepper() ([]byte, bool)        { return s.pepper, true }
func (s staticSecrets) SigningSecret(string) ([]byte, bool) { return nil, false }

func newIdentity(t testing.TB, c *inprocCluster, tok string) *identity {
	t.Helper()
	id := &identity{c: c, tok: tok, pepper: make([]byte, 32), api: newAPIClient(scaled(10 * time.Second))}
	_, _ = rand.Read(id.pepper)
	var err error
	if id.p, err = auth.NewPepper(id.pepper); err != nil {
		t.Fatal(err)
	}
	id.installPepper()
	if id.signer, err = auth.GenerateSigningKey(nil, "edge-test-k1", time.Now()); err != nil {
		t.Fatal(err)
	}
	id.apply(t, fsm.CmdAddSigningKey, &fsm.AddSigningKeyCmd{KID: id.signer.KID, Alg: auth.AlgEdDSA,
		PublicKey: id.signer.Ed25519PrivateKey().Public().(ed25519.PublicKey), Wrapped: []byte("test: not wrapped"), KeyRef: "test"})
	return id
}

// installPepper gives every running server the pepper (a server unwraps it
// from the state at start; call again after restarts).
func (id *identity) installPepper() {
	for _, n := range id.c.running() {
		n.srv.Watch().SetSecrets(staticSecrets{pepper: id.pepper})
	}
}

var operatorP = fsm.Principal{Kind: fsm.PrincipalOperator, ID: "root", Name: "operator", Role: auth.RoleOperator}

// apply proposes a command on the leader and returns its index once the
// leader acknowledged it.
func (id *identity) apply(t testing.TB, typ fsm.CommandType, payload any) uint64 {
	t.Helper()
	l := id.c.leader(t)
	c, err := fsm.NewCommand(typ, fsm.Header{Principal: operatorP, Time: time.Now().UnixNano()}, payload)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	res, err := l.srv.Node().Apply(ctx, c)
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		t.Fatalf("%s: %v", typ, err)
	}
	id.last = max(id.last, res.Index)
	return res.Index
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (id *identity) createTenant(t testing.TB, tenant string, rpm, burst int) {
	t.Helper()
	l := id.c.leader(t)
	r := id.api.must(t, http.StatusCreated, http.MethodPost, l.addr(), "/v1/tenants", id.tok, map[string]string{"id": tenant, "tier": "unlimited"})
	if rpm > 0 {
		r = id.api.must(t, http.StatusOK, http.MethodPut, l.addr(), "/v1/tenants/"+tenant+"/rate-limit", id.tok,
			map[string]int{"requests_per_minute": rpm, "burst": burst})
	}
	if i, ok := r.index(); ok {
		id.last = max(id.last, i)
	}
}

func (id *identity) createAPIKey(t testing.TB, tenant string, role auth.Role) (raw, keyID string) {
	t.Helper()
	raw, k, err := auth.NewAPIKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	id.apply(t, fsm.CmdCreateAPIKey, &fsm.CreateAPIKeyCmd{ID: k.ID, Tenant: tenant, Name: "test", Role: role, Hash: id.p.HashAPIKey(k)})
	return raw, k.ID
}

func (id *identity) revokeAPIKey(t testing.TB, tenant, keyID string) uint64 {
	return id.apply(t, fsm.CmdRevokeAPIKey, &fsm.RevokeAPIKeyCmd{Tenant: tenant, ID: keyID})
}

func (id *identity) createUser(t testing.TB, tenant string, role auth.Role) string {
	t.Helper()
	uid := newID()
	id.apply(t, fsm.CmdCreateUser, &fsm.CreateUserCmd{ID: uid, Tenant: tenant, Username: "u" + uid[:8], Role: role,
		PasswordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"})
	return uid
}

// mintToken signs an access token for a user the way the servers do.
func (id *identity) mintToken(t testing.TB, tenant, userID string, role auth.Role) string {
	t.Helper()
	// iat is whole seconds and tokens_valid_after is rounded up: a token
	// minted in the second the user was created would be refused.
	now := time.Now().Add(time.Second)
	tok, err := auth.Mint(auth.Claims{Subject: userID, TenantID: tenant, Role: role, Issuer: enforcement.DefaultIssuer,
		Audience: []string{enforcement.DefaultAudience}, IssuedAt: now, ExpiresAt: now.Add(time.Hour), ID: newID(),
		Use: auth.TokenAccess}, id.signer)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (id *identity) blockCIDR(t testing.TB, tenant, cidr string) uint64 {
	return id.apply(t, fsm.CmdAddIPRule, &fsm.AddIPRuleCmd{ID: newID(), Tenant: tenant, CIDR: cidr, Action: fsm.IPBlock, Note: "test"})
}

func (id *identity) suspend(t testing.TB, tenant string) uint64 {
	return id.apply(t, fsm.CmdSetTenantStatus, &fsm.SetTenantStatusCmd{ID: tenant, Status: fsm.TenantSuspended})
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
				time.Sleep(50 * time.Microsecond)
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
