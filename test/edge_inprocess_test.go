package test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/enforcement"
	"github.com/allsource/guard/fsm"
)

// startEdgeCluster starts three in-process servers (s1 bootstraps, s2 and
// s3 join) and waits until all three are voters.
func startEdgeCluster(t testing.TB) (*inprocCluster, string) {
	t.Helper()
	c := newInprocCluster(t)
	api := newAPIClient(scaled(10 * time.Second))
	n1 := c.add("s1")
	n2, n3 := c.add("s2", n1.addr()), c.add("s3", n1.addr())
	shareRootKey(t, n1, n2, n3)
	c.start(n1)
	tok := operatorToken(t, n1)
	c.start(n2)
	c.start(n3)
	for _, n := range c.running() {
		waitFor(t, 30*time.Second, n.id()+" to see 3 voters", func() bool {
			ms, err := api.members(n.addr(), tok)
			v, total := voters(ms)
			return err == nil && v == 3 && total == 3
		})
	}
	return c, tok
}

// TestEdgesInProcess runs three servers and three edges in this process —
// a reverse proxy (e1), a forward-auth edge (e2) and an edge embedded in a
// Go service as middleware (e3) — and walks DESIGN.md §5: requests allowed
// through each front end; a revoked key, a suspended tenant and a blocked IP
// refused by every edge right after the write (propagation measured); all
// servers stopped: valid requests still pass and revoked ones still fail; an
// edge restarted with the servers down enforces from its persisted view; the
// servers restarted: the edge catches up from its index without a full
// resync; and the edges' audit reaches the servers' log.
func TestEdgesInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	c, tok := startEdgeCluster(t)
	id := newIdentity(t, c, tok)
	api := newAPIClient(scaled(10 * time.Second))
	id.createTenant(t, "acme", 0, 0)
	id.createTenant(t, "beta", 0, 0)
	keyA, keyAID := id.createAPIKey(t, "acme", auth.RoleDeveloper)
	keyR, keyRID := id.createAPIKey(t, "acme", auth.RoleReadOnly)
	keyB, _ := id.createAPIKey(t, "beta", auth.RoleDeveloper)
	user, username := id.createUser(t, "acme", auth.RoleDeveloper)
	jwt := id.login(t, "acme", username)

	up := echoUpstream(t)
	e1 := newEdgeNode(t, c, "e1", up.URL, nil)
	e2 := newEdgeNode(t, c, "e2", "", nil)
	// e3: an edge embedded in a Go service (no listener of its own).
	var seeds []string
	for _, n := range c.running() {
		seeds = append(seeds, n.addr())
	}
	emb, err := enforcement.New(enforcement.Config{NodeID: "e3", DataDir: t.TempDir(), JoinToken: testJoinToken,
		Servers: seeds, TrustedProxies: mustPrefixes(t, "127.0.0.0/8"), Logger: c.logs.logger("e3")})
	if err != nil {
		t.Fatal(err)
	}
	emb.Start()
	t.Cleanup(func() { emb.Close() })
	var sawTenant atomic.Value
	svc := httptest.NewServer(emb.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idn, _ := enforcement.IdentityFrom(r.Context())
		sawTenant.Store(idn.Tenant + "/" + r.Header.Get("X-User-Id"))
		w.WriteHeader(http.StatusOK)
	})))
	t.Cleanup(svc.Close)

	proxyURL := func(path string) string { return "http://" + e1.addr() + path }
	checkURL := func(path string) string { return "http://" + e2.addr() + path }
	// Each front end: one request, identity headers by kind.
	type frontEnd struct {
		name string
		do   func(kv ...string) *resp
	}
	fronts := []frontEnd{
		{"proxy", func(kv ...string) *resp { return send(t, "GET", proxyURL("/orders"), kv...) }},
		{"forward-auth", func(kv ...string) *resp {
			return send(t, "GET", checkURL("/v1/check"), append([]string{"X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/orders"}, kv...)...)
		}},
		{"middleware", func(kv ...string) *resp { return send(t, "GET", svc.URL+"/orders", kv...) }},
	}
	allEdges := []*enforcement.Edge{e1.edge(), e2.edge(), emb}
	edgeNames := []string{"e1", "e2", "e3"}

	step := func(name string, fn func(t *testing.T)) {
		if !t.Run(name, fn) {
			t.FailNow()
		}
	}

	step("front_ends", func(t *testing.T) {
		id.waitEdgesCurrent(t, allEdges...)
		r := send(t, "GET", proxyURL("/orders"), "X-API-Key", keyA, "X-Tenant-Id", "evil", "X-User-Id", "root")
		var echo map[string]string
		r.decode(t, &echo)
		if echo["X-Tenant-Id"] != "acme" || echo["X-User-Id"] != keyAID || echo["X-Role"] != "developer" {
			t.Fatalf("upstream saw %v", echo)
		}
		if r.Header.Get("X-Request-Id") == "" || r.Header.Get("Strict-Transport-Security") == "" {
			t.Fatalf("proxy answer headers %v", r.Header)
		}
		r = send(t, "GET", proxyURL("/orders"), "Authorization", "Bearer "+jwt)
		r.decode(t, &echo)
		if r.Status != http.StatusOK || echo["X-User-Id"] != user || echo["X-Credential-Type"] != "jwt" {
			t.Fatalf("JWT through the proxy: %s", r)
		}
		for name, hdrs := range map[string][]string{
			"traefik": {"X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/orders?x=1"},
			"nginx":   {"X-Original-Method", "GET", "X-Original-URI", "/orders"},
		} {
			r = send(t, "GET", checkURL("/v1/check"), append(hdrs, "Authorization", "Bearer "+jwt)...)
			if r.Status != http.StatusOK || r.Header.Get("X-Tenant-Id") != "acme" || r.Header.Get("X-User-Id") != user {
				t.Fatalf("forward-auth (%s): %s %v", name, r, r.Header)
			}
		}
		r = send(t, "GET", checkURL("/v1/check/orders/7"), "X-API-Key", keyA) // Envoy ext_authz
		if r.Status != http.StatusOK || r.Header.Get("X-Api-Key-Id") != keyAID {
			t.Fatalf("forward-auth (envoy): %s %v", r, r.Header)
		}
		if got := fronts[2].do("X-API-Key", keyA); got.Status != http.StatusOK || sawTenant.Load() != "acme/"+keyAID {
			t.Fatalf("middleware: %s, service saw %v", got, sawTenant.Load())
		}
		for _, fe := range fronts {
			r := fe.do()
			var e struct {
				Error struct{ Code, RequestID string } `json:"error"`
			}
			_ = json.Unmarshal(r.Body, &e)
			if r.Status != http.StatusUnauthorized || e.Error.Code != "unauthenticated" {
				t.Fatalf("%s without a credential: %s", fe.name, r)
			}
		}
		// A readonly key cannot write (default route map: POST needs write).
		if r := send(t, "POST", proxyURL("/orders"), "X-API-Key", keyR); r.Status != http.StatusForbidden {
			t.Fatalf("readonly key writing: %s", r)
		}
	})

	var delays []time.Duration
	measure := func(t *testing.T, what string, reflected func(v *enforcement.View) bool, write func()) {
		t.Helper()
		p := watchEdges(allEdges, edgeNames, reflected)
		write()
		ack := time.Now()
		d := p.wait(t, ack, len(allEdges))
		t.Logf("%s enforced after the write's acknowledgement: %s", what, fmtDelays(d))
		for _, v := range d {
			delays = append(delays, v)
		}
		if m := maxDelay(d); m > scaled(2*time.Second) {
			t.Errorf("%s took %v to reach every edge", what, m)
		}
	}

	step("revocation_propagates", func(t *testing.T) {
		for _, fe := range fronts {
			if r := fe.do("X-API-Key", keyR); r.Status != http.StatusOK {
				t.Fatalf("%s before revocation: %s", fe.name, r)
			}
		}
		measure(t, "API key revocation", func(v *enforcement.View) bool {
			k, ok := v.APIKey(keyRID)
			return ok && !k.RevokedAt.IsZero()
		}, func() { id.revokeAPIKey(t, "acme", keyRID) })
		for _, fe := range fronts {
			if r := fe.do("X-API-Key", keyR); r.Status != http.StatusUnauthorized {
				t.Fatalf("%s accepted a revoked key: %s", fe.name, r)
			}
		}
	})

	step("suspension_propagates", func(t *testing.T) {
		for _, fe := range fronts {
			if r := fe.do("X-API-Key", keyB); r.Status != http.StatusOK {
				t.Fatalf("%s before suspension: %s", fe.name, r)
			}
		}
		measure(t, "tenant suspension", func(v *enforcement.View) bool {
			tn, ok := v.Tenant("beta")
			return ok && tn.Status == fsm.TenantSuspended
		}, func() { id.suspend(t, "beta") })
		for _, fe := range fronts {
			if r := fe.do("X-API-Key", keyB); r.Status != http.StatusForbidden {
				t.Fatalf("%s served a suspended tenant: %s", fe.name, r)
			}
		}
	})

	step("ip_block_propagates", func(t *testing.T) {
		const client = "203.0.113.7"
		for _, fe := range fronts {
			if r := fe.do("X-API-Key", keyA, "X-Forwarded-For", client); r.Status != http.StatusOK {
				t.Fatalf("%s before the block: %s", fe.name, r)
			}
		}
		addr := mustAddr(t, client)
		measure(t, "global IP block", func(v *enforcement.View) bool {
			return !v.IPFilter().Check("", addr).Allowed
		}, func() { id.blockCIDR(t, "", "203.0.113.0/24") })
		for _, fe := range fronts {
			if r := fe.do("X-API-Key", keyA, "X-Forwarded-For", client); r.Status != http.StatusForbidden {
				t.Fatalf("%s served a blocked address: %s", fe.name, r)
			}
			if r := fe.do("X-API-Key", keyA); r.Status != http.StatusOK {
				t.Fatalf("%s refused an unblocked address: %s", fe.name, r)
			}
		}
		sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
		t.Logf("propagation over %d edge observations: median %v, max %v", len(delays),
			percentile(delays, 0.5).Round(10*time.Microsecond), delays[len(delays)-1].Round(10*time.Microsecond))
	})

	step("edge_audit_reaches_the_log", func(t *testing.T) {
		l := c.leader(t)
		for _, q := range []string{"action=authentication_failed", "action=api_key_used"} {
			waitFor(t, 20*time.Second, "audit entries "+q+" from the edges", func() bool {
				r, err := api.call(http.MethodGet, l.addr(), "/v1/tenants/acme/audit?"+q, tok, nil)
				if err != nil || r.Status != http.StatusOK {
					return false
				}
				var page struct {
					Entries []fsm.AuditEntry `json:"entries"`
				}
				_ = json.Unmarshal(r.Body, &page)
				for _, e := range page.Entries {
					// keyA is only ever used through edges: its use entries
					// come from their aggregated reports.
					if e.Metadata["edge"] != "" || (e.Action == fsm.ActionAPIKeyUsed && e.Actor.ID == keyAID) {
						return true
					}
				}
				return false
			})
		}
		// The edges report usage to the leader's adaptive limiter too.
		waitFor(t, 20*time.Second, "usage reports from the edges on the leader", func() bool {
			r, err := api.call(http.MethodGet, l.addr(), "/metrics", tok, nil)
			return err == nil && strings.Contains(string(r.Body), `route="POST /v1/internal/usage"`) &&
				strings.Contains(string(r.Body), `code="204"`)
		})
		// A global block is decided before authentication: it goes to the
		// cluster's own chain (tenant ""), which only the operator reads.
		waitFor(t, 20*time.Second, "ip_blocked entries from the edges in the cluster chain", func() bool {
			var n int
			_ = c.leader(t).srv.FSM().View(func(r *fsm.Reader) error {
				es, _ := r.Audit(fsm.AuditQuery{Tenant: "", Action: fsm.ActionIPBlocked, Limit: 100})
				for _, e := range es {
					if e.Metadata["edge"] != "" && e.IP == "203.0.113.7" {
						n++
					}
				}
				return nil
			})
			return n > 0
		})
	})

	before := e1.replica().Status()
	step("servers_down", func(t *testing.T) {
		for _, n := range c.running() {
			c.stop(n)
		}
		waitFor(t, 15*time.Second, "every edge to notice the servers are gone", func() bool {
			for _, e := range allEdges {
				if e.Replica().Status().Connected {
					return false
				}
			}
			return true
		})
		for _, fe := range fronts {
			for range 20 {
				if r := fe.do("X-API-Key", keyA); r.Status != http.StatusOK {
					t.Fatalf("%s failed a valid request with the servers down: %s", fe.name, r)
				}
			}
			if r := fe.do("X-API-Key", keyR); r.Status != http.StatusUnauthorized {
				t.Fatalf("%s accepted a revoked key with the servers down: %s", fe.name, r)
			}
			if r := fe.do("Authorization", "Bearer "+jwt); r.Status != http.StatusOK {
				t.Fatalf("%s refused a valid token with the servers down: %s", fe.name, r)
			}
		}
		var h enforcement.Health
		send(t, "GET", proxyURL("/health"), "").decode(t, &h)
		if h.Role != "edge" || h.Status != "disconnected" || h.ViewIndex == 0 || h.StalenessSeconds <= 0 {
			t.Fatalf("edge health with the servers down: %+v", h)
		}
		// Audit made now waits in the spool.
		waitFor(t, 10*time.Second, "denials to be spooled", func() bool {
			send(t, "GET", proxyURL("/x"), "X-API-Key", keyR)
			return e1.edge().Shipper().Stats().SpoolEntries > 0
		})
	})

	step("edge_restart_enforces_persisted_view", func(t *testing.T) {
		e1.restart(t)
		// No server is up: these answers come from the persisted view.
		if r := send(t, "GET", proxyURL("/orders"), "X-API-Key", keyA); r.Status != http.StatusOK {
			t.Fatalf("restarted edge refused a valid key: %s", r)
		}
		if r := send(t, "GET", proxyURL("/orders"), "X-API-Key", keyR); r.Status != http.StatusUnauthorized {
			t.Fatalf("restarted edge accepted a revoked key: %s", r)
		}
		if r := send(t, "GET", proxyURL("/orders"), "X-API-Key", keyB); r.Status != http.StatusForbidden {
			t.Fatalf("restarted edge served a suspended tenant: %s", r)
		}
		if r := send(t, "GET", proxyURL("/orders"), "Authorization", "Bearer "+jwt); r.Status != http.StatusOK {
			t.Fatalf("restarted edge refused a valid token: %s", r)
		}
		st := e1.replica().Status()
		if st.Connected || st.ViewIndex < before.ViewIndex {
			t.Fatalf("restarted edge status %+v (view index before: %d)", st, before.ViewIndex)
		}
		if e1.edge().Shipper().Stats().SpoolEntries == 0 {
			t.Fatal("the audit spool did not survive the restart")
		}
	})

	step("servers_back_resume_without_resync", func(t *testing.T) {
		st0 := e1.replica().Status()
		for _, n := range c.nodes {
			c.start(n)
		}
		c.leader(t)
		waitFor(t, 30*time.Second, "e1 to reconnect", func() bool { return e1.replica().Status().Connected })
		newKey, _ := id.createAPIKey(t, "acme", auth.RoleDeveloper)
		waitFor(t, 20*time.Second, "e1 to accept a key made after the restart", func() bool {
			return send(t, "GET", proxyURL("/orders"), "X-API-Key", newKey).Status == http.StatusOK
		})
		st := e1.replica().Status()
		if st.Resyncs != st0.Resyncs {
			t.Fatalf("e1 resynchronised in full after the servers came back (resyncs %d → %d); it should resume from index %d",
				st0.Resyncs, st.Resyncs, st0.ViewIndex)
		}
		if st.Resumes <= st0.Resumes {
			t.Fatalf("e1 did not resume (resumes %d → %d)", st0.Resumes, st.Resumes)
		}
		t.Logf("e1 resumed from index %d to %d without a resync (resyncs %d, resumes %d)", st0.ViewIndex, st.ViewIndex, st.Resyncs, st.Resumes)
		waitFor(t, 30*time.Second, "the spooled audit to be shipped", func() bool {
			return e1.edge().Shipper().Stats().SpoolEntries == 0
		})
		if d := e1.edge().Shipper().Stats().Dropped; d != 0 {
			t.Fatalf("audit entries dropped: %d", d)
		}
	})
}

// TestEdgeDevMode: a dev edge next to a dev server lets credential-less
// requests through as dev-user of dev-tenant (admin), reports dev mode on
// /health, and refuses a non-loopback address unless forced.
func TestEdgeDevMode(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	c := newInprocCluster(t)
	n := c.add("dev1")
	n.cfg.Dev, n.cfg.JoinToken = true, ""
	if err := n.cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	c.start(n)
	up := echoUpstream(t)
	e := newEdgeNode(t, c, "dev-edge", up.URL, func(cfg *edgeConfig) {
		cfg.Dev, cfg.JoinToken, cfg.DataDir, cfg.GossipAddr = true, "", "", ""
	})
	waitFor(t, 20*time.Second, "the dev edge to load a view", func() bool { return e.edge().Pipeline().View() != nil })
	r := send(t, "DELETE", "http://"+e.addr()+"/anything")
	var echo map[string]string
	r.decode(t, &echo)
	if r.Status != http.StatusOK || echo["X-Tenant-Id"] != "dev-tenant" || echo["X-User-Id"] != "dev-user" || echo["X-Role"] != "admin" {
		t.Fatalf("dev request: %s", r)
	}
	for range 200 { // no rate limit in dev mode
		if r := send(t, "GET", "http://"+e.addr()+"/x"); r.Status != http.StatusOK {
			t.Fatalf("dev edge limited or refused: %s", r)
		}
	}
	// A presented credential must still be valid.
	if r := send(t, "GET", "http://"+e.addr()+"/x", "X-API-Key", "ask_nope"); r.Status != http.StatusUnauthorized {
		t.Fatalf("bad key in dev mode: %s", r)
	}
	var h enforcement.Health
	send(t, "GET", "http://"+e.addr()+"/health").decode(t, &h)
	if !h.DevMode || h.Role != "edge" {
		t.Fatalf("health %+v", h)
	}
	bad := e.cfg
	bad.HTTPAddr = "0.0.0.0:0"
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("dev edge on 0.0.0.0 accepted: %v", err)
	}
	bad.DevForceBind = true
	if err := bad.Validate(); err != nil {
		t.Fatalf("-dev-force-bind refused: %v", err)
	}
}
