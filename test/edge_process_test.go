package test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/kms"
)

// edgeHealth is the part of an edge's /health the tests read.
type edgeHealth struct {
	Status    string `json:"status"`
	Role      string `json:"role"`
	ViewIndex uint64 `json:"view_index"`
	Replica   struct {
		Connected bool   `json:"connected"`
		Resyncs   uint64 `json:"resyncs"`
		Resumes   uint64 `json:"resumes"`
	} `json:"replica"`
}

func getEdgeHealth(t testing.TB, addr string) edgeHealth {
	t.Helper()
	var h edgeHealth
	r := send(t, "GET", "http://"+addr+"/health")
	if err := json.Unmarshal(r.Body, &h); err != nil {
		t.Fatalf("edge health: %v (%s)", err, r)
	}
	return h
}

// TestEdgeProcesses runs three `allsource server` processes and two
// `allsource edge` processes (a reverse proxy and a forward-auth endpoint):
// requests pass through both front ends; a revoked key, a suspended tenant
// and a blocked address are refused by both edges right after the write
// (delay measured over HTTP); with every server killed, valid requests keep
// passing and revoked ones keep failing; the proxy edge, killed and
// restarted with the servers still down, enforces from its persisted view;
// and when the servers come back it catches up from its index without a
// full resync.
func TestEdgeProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	allsourceBinary(t)
	dir := t.TempDir()
	rootKey := filepath.Join(dir, "kms-root.key")
	if _, err := kms.InitLocalRootKey(rootKey); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "operator.token")
	var procs []*serverProc
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill(t)
		}
		if t.Failed() {
			for _, p := range procs {
				b, _ := os.ReadFile(p.logPath)
				t.Logf("--- last stderr lines of %s:\n%s", p.id, tailLines(string(b), 40))
			}
		}
	})
	newProc := func(id string, args ...string) *serverProc {
		p := &serverProc{id: id, args: args, logPath: filepath.Join(dir, id+".stderr")}
		procs = append(procs, p)
		return p
	}
	var servers []*serverProc
	var seeds []string
	for i, id := range []string{"s1", "s2", "s3"} {
		ports := reservePorts(t, 3)
		args := []string{"server", "-node-id", id, "-data-dir", filepath.Join(dir, id), "-http-addr", loopback(ports[0]),
			"-raft-addr", loopback(ports[1]), "-gossip-addr", loopback(ports[2]), "-join-token", testJoinToken,
			"-kms-local-key-file", rootKey}
		if i == 0 {
			args = append(args, "-bootstrap", "-operator-token-file", tokenFile)
		} else {
			args = append(args, "-join", seeds[0])
		}
		p := newProc(id, args...)
		p.http = loopback(ports[0])
		servers = append(servers, p)
		seeds = append(seeds, p.http)
	}
	servers[0].start(t)
	var tok string
	waitFor(t, 30*time.Second, "s1 to write the operator token", func() bool {
		b, err := os.ReadFile(tokenFile)
		tok = strings.TrimSpace(string(b))
		return err == nil && strings.HasSuffix(string(b), "\n") && tok != ""
	})
	servers[1].start(t)
	servers[2].start(t)
	api := newAPIClient(scaled(10 * time.Second))
	for _, p := range servers {
		waitFor(t, 30*time.Second, p.id+" to see 3 voters", func() bool {
			ms, err := api.members(p.http, tok)
			v, total := voters(ms)
			return err == nil && v == 3 && total == 3
		})
	}
	// The identity helper over processes: the leader is whichever answers
	// as leader on /health.
	c := &procCluster{api: api, servers: servers}
	id := &identity{tok: tok, api: api, leaderAddr: c.leaderAddr}
	id.createTenant(t, "acme", 0, 0)
	id.createTenant(t, "beta", 0, 0)
	keyA, _ := id.createAPIKey(t, "acme", "developer")
	keyR, keyRID := id.createAPIKey(t, "acme", "readonly")
	keyB, _ := id.createAPIKey(t, "beta", "developer")
	_, username := id.createUser(t, "acme", "developer")
	jwt := id.login(t, "acme", username)

	up := echoUpstream(t)
	edgeArgs := func(id, upstream string) (*serverProc, string) {
		ports := reservePorts(t, 2)
		args := []string{"edge", "-node-id", id, "-data-dir", filepath.Join(dir, id), "-http-addr", loopback(ports[0]),
			"-gossip-addr", loopback(ports[1]), "-join", strings.Join(seeds, ","), "-join-token", testJoinToken,
			"-trusted-proxies", "127.0.0.0/8"}
		if upstream != "" {
			args = append(args, "-upstream", upstream)
		}
		p := newProc(id, args...)
		p.http = loopback(ports[0])
		return p, p.http
	}
	e1, e1Addr := edgeArgs("e1", up.URL)
	e2, e2Addr := edgeArgs("e2", "")
	e1.start(t)
	e2.start(t)
	proxy := func(kv ...string) *resp { return send(t, "GET", "http://"+e1Addr+"/orders", kv...) }
	check := func(kv ...string) *resp {
		return send(t, "GET", "http://"+e2Addr+"/v1/check", append([]string{"X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/orders"}, kv...)...)
	}
	fronts := map[string]func(kv ...string) *resp{"proxy": proxy, "forward-auth": check}
	for name, fe := range fronts {
		waitFor(t, 30*time.Second, name+" edge to admit the newest key", func() bool {
			r, err := trySend("GET", "http://"+map[string]string{"proxy": e1Addr, "forward-auth": e2Addr}[name]+"/health")
			if err != nil || r.Status != http.StatusOK {
				return false
			}
			return fe("X-API-Key", keyB).Status == http.StatusOK
		})
		if r := fe("X-API-Key", keyA); r.Status != http.StatusOK {
			t.Fatalf("%s with a valid key: %s", name, r)
		}
		if r := fe("Authorization", "Bearer "+jwt); r.Status != http.StatusOK {
			t.Fatalf("%s with a valid token: %s", name, r)
		}
	}
	var echo map[string]string
	proxy("X-API-Key", keyA, "X-Tenant-Id", "evil").decode(t, &echo)
	if echo["X-Tenant-Id"] != "acme" {
		t.Fatalf("upstream saw %v", echo)
	}

	// Writes on the leader, refused by both edges right after.
	refusedBy := func(what string, want int, kv ...string) {
		t.Helper()
		ack := time.Now()
		for name, fe := range fronts {
			// Poll every millisecond (waitFor's 20 ms would hide the delay).
			deadline := time.Now().Add(scaled(10 * time.Second))
			for fe(kv...).Status != want {
				if time.Now().After(deadline) {
					t.Fatalf("%s edge did not enforce %s within %v", name, what, scaled(10*time.Second))
				}
				time.Sleep(time.Millisecond)
			}
			t.Logf("%s enforced by the %s edge %v after the write's acknowledgement (HTTP polling)", what, name,
				time.Since(ack).Round(100*time.Microsecond))
		}
	}
	id.revokeAPIKey(t, "acme", keyRID)
	refusedBy("API key revocation", http.StatusUnauthorized, "X-API-Key", keyR)
	id.suspend(t, "beta")
	refusedBy("tenant suspension", http.StatusForbidden, "X-API-Key", keyB)
	id.blockCIDR(t, "", "203.0.113.0/24")
	refusedBy("IP block", http.StatusForbidden, "X-API-Key", keyA, "X-Forwarded-For", "203.0.113.9")

	// Every server killed: the edges go on deciding from their views.
	for _, p := range servers {
		p.kill(t)
	}
	waitFor(t, 20*time.Second, "both edges to lose their servers", func() bool {
		return !getEdgeHealth(t, e1Addr).Replica.Connected && !getEdgeHealth(t, e2Addr).Replica.Connected
	})
	for name, fe := range fronts {
		for range 20 {
			if r := fe("X-API-Key", keyA); r.Status != http.StatusOK {
				t.Fatalf("%s failed a valid request with every server down: %s", name, r)
			}
		}
		if r := fe("Authorization", "Bearer "+jwt); r.Status != http.StatusOK {
			t.Fatalf("%s refused a valid token with every server down: %s", name, r)
		}
		if r := fe("X-API-Key", keyR); r.Status != http.StatusUnauthorized {
			t.Fatalf("%s accepted a revoked key with every server down: %s", name, r)
		}
	}

	// The proxy edge is killed and restarted with the servers still down.
	before := getEdgeHealth(t, e1Addr)
	e1.kill(t)
	e1.start(t)
	waitFor(t, 20*time.Second, "the restarted edge to answer", func() bool {
		r, err := trySend("GET", "http://"+e1Addr+"/health")
		return err == nil && r.Status == http.StatusOK
	})
	h := getEdgeHealth(t, e1Addr)
	if h.ViewIndex < before.ViewIndex || h.Replica.Connected || h.Role != "edge" {
		t.Fatalf("restarted edge: %+v (before: view index %d)", h, before.ViewIndex)
	}
	if r := proxy("X-API-Key", keyA); r.Status != http.StatusOK {
		t.Fatalf("restarted edge refused a valid key from its persisted view: %s", r)
	}
	if r := proxy("X-API-Key", keyR); r.Status != http.StatusUnauthorized {
		t.Fatalf("restarted edge accepted a revoked key: %s", r)
	}
	if r := proxy("X-API-Key", keyB); r.Status != http.StatusForbidden {
		t.Fatalf("restarted edge served a suspended tenant: %s", r)
	}

	// The servers come back: the edge resumes from its index.
	for _, p := range servers {
		p.start(t)
	}
	fresh, _ := id.createAPIKey(t, "acme", "developer")
	waitFor(t, 30*time.Second, "the restarted edge to admit a key made after the servers came back", func() bool {
		return proxy("X-API-Key", fresh).Status == http.StatusOK
	})
	h = getEdgeHealth(t, e1Addr)
	if h.Replica.Resyncs != 0 || h.Replica.Resumes == 0 {
		t.Fatalf("the restarted edge caught up with resyncs=%d resumes=%d; want a resume from index %d and no resync",
			h.Replica.Resyncs, h.Replica.Resumes, before.ViewIndex)
	}
	t.Logf("restarted edge resumed from index %d to %d without a full resync", before.ViewIndex, h.ViewIndex)
}

// procCluster finds the leader among server processes.
type procCluster struct {
	api     *apiClient
	servers []*serverProc
}

func (c *procCluster) leaderAddr(t testing.TB) string {
	t.Helper()
	var addr string
	waitFor(t, 30*time.Second, "a leader among the server processes", func() bool {
		for _, p := range c.servers {
			if !p.running() {
				continue
			}
			if h, err := c.api.health(p.http); err == nil && h.Role == "leader" {
				addr = p.http
				return true
			}
		}
		return false
	})
	return addr
}
