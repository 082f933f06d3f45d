package test

import (
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/enforcement"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/kms"
)

// attacker sends logins as if from addr: the test plays a trusted peer
// server (join token), which the API takes the client address from.
func attackLogin(t *testing.T, api *apiClient, c *inprocCluster, username, addr string) int {
	t.Helper()
	var status int
	threatWait(t, scaled(20*time.Second), "a login answer from a live server", func() bool {
		for _, n := range c.running() {
			req, _ := http.NewRequest(http.MethodPost, "http://"+n.addr()+"/v1/auth/login",
				strings.NewReader(`{"tenant":"acme","username":"`+username+`","password":"wrong-password-123"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Allsource-Forward-Token", testJoinToken)
			req.Header.Set("X-Allsource-Client-Ip", addr)
			hr, err := api.hc.Do(req)
			if err != nil {
				continue
			}
			hr.Body.Close()
			if hr.StatusCode == http.StatusUnauthorized || hr.StatusCode == http.StatusOK {
				status = hr.StatusCode
				return true
			}
		}
		return false
	})
	return status
}

// loginFailures counts tenant acme's committed login_failed entries for
// username, on server n.
func loginFailures(n *inprocNode, username string) int {
	c := 0
	_ = n.srv.FSM().View(func(rd *fsm.Reader) error {
		es, _ := rd.Audit(fsm.AuditQuery{Tenant: "acme", Action: fsm.ActionLoginFailed, Limit: 1000})
		for _, e := range es {
			if e.Actor.Name == username {
				c++
			}
		}
		return nil
	})
	return c
}

// bruteForceAnomalies returns acme's brute-force anomalies, on server n.
func bruteForceAnomalies(n *inprocNode) map[string][]*fsm.Anomaly {
	out := map[string][]*fsm.Anomaly{}
	_ = n.srv.FSM().View(func(rd *fsm.Reader) error {
		as, _ := rd.Anomalies(fsm.AnomalyQuery{Tenant: "acme", Kind: fsm.AnomalyBruteForce})
		for _, a := range as {
			out[a.Subject.Username] = append(out[a.Subject.Username], a)
		}
		return nil
	})
	return out
}

func blockRules(n *inprocNode, cidr string) int {
	c := 0
	_ = n.srv.FSM().View(func(rd *fsm.Reader) error {
		for _, r := range rd.IPRules("acme", 10000) {
			if r.CIDR == cidr && r.Action == fsm.IPBlock {
				c++
			}
		}
		return nil
	})
	return c
}

// edgesBlock reports whether every edge's view blocks addr for tenant acme.
func edgesBlock(edges []*enforcement.Edge, addr netip.Addr) bool {
	for _, e := range edges {
		v := e.Pipeline().View()
		if v == nil || v.IPFilter().Check("acme", addr).Allowed {
			return false
		}
	}
	return true
}

// TestThreatBruteForceEndToEnd: three servers, three edges, a scripted
// brute-force attack against the login endpoint.
//
//   - bob is attacked from 198.51.100.8: at the fifth failure the leader
//     detects it and, in one raft entry, records the anomaly, locks bob and
//     blocks the address for the tenant; every edge refuses the address
//     within a bounded time, and the audit trail shows the detection and
//     the actions.
//   - alice is attacked from 198.51.100.7: after three failures the leader
//     is killed; the attack goes on through the survivors, and the new
//     leader detects it at the fifth failure and blocks the address.
//   - the attack on bob goes on after the failover: the new leader does not
//     act on it again (one anomaly, one rule).
func TestThreatBruteForceEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	c := newInprocCluster(t)
	api := newAPIClient(scaled(10 * time.Second))
	rootKey := filepath.Join(t.TempDir(), "kms-root.key")
	if _, err := kms.InitLocalRootKey(rootKey); err != nil {
		t.Fatal(err)
	}
	var nodes []*inprocNode
	for i, id := range []string{"s1", "s2", "s3"} {
		var n *inprocNode
		if i == 0 {
			n = c.add(id)
		} else {
			n = c.add(id, nodes[0].addr())
		}
		// Every server loads the same KMS root key (the signing keys are
		// wrapped by it), and hashes passwords with test-strength Argon2.
		n.cfg.KMSLocalKeyFile = rootKey
		n.cfg.Identity.ArgonMemoryKiB, n.cfg.Identity.ArgonTime, n.cfg.Identity.AllowWeakArgon = 64, 1, true
		nodes = append(nodes, n)
	}
	c.start(nodes[0])
	tok := operatorToken(t, nodes[0])
	c.start(nodes[1])
	c.start(nodes[2])
	for _, n := range c.running() {
		waitFor(t, 30*time.Second, n.id()+" to see 3 voters", func() bool {
			ms, err := api.members(n.addr(), tok)
			v, total := voters(ms)
			return err == nil && v == 3 && total == 3
		})
	}
	leader := c.leader(t)
	api.must(t, http.StatusCreated, http.MethodPost, leader.addr(), "/v1/tenants", tok, map[string]string{"id": "acme"})
	for _, u := range []string{"alice", "bob"} {
		mustEventually(t, api, http.StatusCreated, http.MethodPost, leader.addr(), "/v1/tenants/acme/users", tok,
			map[string]string{"username": u, "password": "correct-horse-battery-42", "role": "developer"})
	}
	var key struct {
		Key string `json:"key"`
	}
	mustEventually(t, api, http.StatusCreated, http.MethodPost, leader.addr(), "/v1/tenants/acme/api-keys", tok,
		map[string]string{"name": "svc", "role": "readonly"}).decode(t, &key)

	e1 := newEdgeNode(t, c, "e1", echoUpstream(t).URL, nil)
	e2 := newEdgeNode(t, c, "e2", "", nil)
	e3 := newEdgeNode(t, c, "e3", "", nil)
	edges := []*enforcement.Edge{e1.edge(), e2.edge(), e3.edge()}
	bobIP, aliceIP := netip.MustParseAddr("198.51.100.8"), netip.MustParseAddr("198.51.100.7")
	// Before the attack the key works from the attacker's address, through an edge.
	waitFor(t, 20*time.Second, "the edge to admit the key", func() bool {
		r, err := trySend("GET", "http://"+e2.addr()+"/v1/check", "X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/orders",
			"X-Forwarded-For", bobIP.String(), "Authorization", "Bearer "+key.Key)
		return err == nil && r.Status == http.StatusOK
	})

	// bob: five failures on the first leader.
	for i := 0; i < 5; i++ {
		if st := attackLogin(t, api, c, "bob", bobIP.String()); st != http.StatusUnauthorized {
			t.Fatalf("attack login %d answered %d", i+1, st)
		}
	}
	fifth := time.Now()
	waitFor(t, 10*time.Second, "every edge to block bob's attacker", func() bool { return edgesBlock(edges, bobIP) })
	blocked := time.Since(fifth)
	t.Logf("brute force on bob: blocked on all %d edges %v after the fifth failed login's answer", len(edges), blocked.Round(time.Millisecond))
	if blocked > scaled(5*time.Second) {
		t.Errorf("blocking took %v, want within 5 s", blocked)
	}
	if r := send(t, "GET", "http://"+e2.addr()+"/v1/check", "X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/orders",
		"X-Forwarded-For", bobIP.String(), "Authorization", "Bearer "+key.Key); r.Status != http.StatusForbidden {
		t.Errorf("a request from the blocked address through an edge: %s, want 403", r)
	}
	first := leader
	bobA := bruteForceAnomalies(first)["bob"]
	if len(bobA) != 1 || bobA[0].Subject.IP != bobIP.String() || bobA[0].Level != fsm.LevelBlock {
		t.Fatalf("bob's anomalies on %s: %+v", first.id(), bobA)
	}
	var bobUser *fsm.User
	for _, n := range c.running() {
		waitFor(t, 10*time.Second, "bob locked on "+n.id(), func() bool {
			_ = n.srv.FSM().View(func(rd *fsm.Reader) error { bobUser, _ = rd.UserByName("acme", "bob"); return nil })
			return bobUser != nil && bobUser.Locked(time.Now())
		})
	}
	// The audit trail: the detection, then its actions, by the detector.
	var trail []string
	_ = first.srv.FSM().View(func(rd *fsm.Reader) error {
		es, _ := rd.Audit(fsm.AuditQuery{Tenant: "acme", After: bobA[0].TriggerSeq, Limit: 1000})
		for _, e := range es {
			if e.Actor.Kind == fsm.PrincipalSystem && e.Actor.Name == "threat-detector" {
				trail = append(trail, string(e.Action)+":"+e.Resource)
			}
		}
		return nil
	})
	if len(trail) < 2 || trail[0] != "anomaly_detected:anomaly/"+bobA[0].ID || !strings.HasPrefix(trail[1], "user_locked:") && !strings.HasPrefix(trail[1], "ip_rule_added:") {
		t.Errorf("audit trail of the detector = %v", trail)
	}
	if !strings.Contains(strings.Join(trail, " "), "ip_rule_added:ip-rule/"+bobA[0].Actions[len(bobA[0].Actions)-1].RuleID) {
		t.Errorf("the block is not in the audit trail: %v (actions %+v)", trail, bobA[0].Actions)
	}

	// alice: three failures, then the leader dies mid-attack.
	for i := 0; i < 3; i++ {
		attackLogin(t, api, c, "alice", aliceIP.String())
	}
	waitFor(t, 10*time.Second, "alice's three failures committed", func() bool { return loginFailures(first, "alice") == 3 })
	c.stop(first)
	second := c.leader(t)
	t.Logf("killed leader %s mid-attack; new leader %s", first.id(), second.id())
	for i := 0; i < 5; i++ { // failures 4-8: the new leader detects at the fifth
		attackLogin(t, api, c, "alice", aliceIP.String())
	}
	for i := 0; i < 4; i++ { // and bob's attacker keeps trying
		attackLogin(t, api, c, "bob", bobIP.String())
	}
	live := []*enforcement.Edge{e1.edge(), e2.edge(), e3.edge()}
	waitFor(t, 20*time.Second, "every edge to block alice's attacker", func() bool { return edgesBlock(live, aliceIP) })
	waitFor(t, 10*time.Second, "all failures committed on the new leader", func() bool {
		return loginFailures(second, "alice") == 8 && loginFailures(second, "bob") == 9
	})
	// Let the new leader analyse everything committed, then count.
	waitFor(t, 10*time.Second, "the new leader's detector to analyse the whole log", func() bool {
		var head uint64
		_ = second.srv.FSM().View(func(rd *fsm.Reader) error {
			for _, h := range rd.AuditHeads() {
				if h.Tenant == "acme" {
					head = h.Seq
				}
			}
			return nil
		})
		return second.srv.Threat().Leading() && head > 0 && second.srv.Threat().AnalysedTo("acme") == head
	})
	all := bruteForceAnomalies(second)
	if len(all["alice"]) != 1 || all["alice"][0].Subject.IP != aliceIP.String() {
		t.Fatalf("alice's anomalies after the failover: %+v", all["alice"])
	}
	if all["alice"][0].Index <= bobA[0].Index || second.srv.Threat().Recorded() < 1 {
		t.Errorf("alice's anomaly was not recorded by the new leader (index %d, recorded %d)", all["alice"][0].Index, second.srv.Threat().Recorded())
	}
	if len(all["bob"]) != 1 {
		t.Fatalf("bob's attack acted on twice across the failover: %+v", all["bob"])
	}
	if n := blockRules(second, bobIP.String()+"/32"); n != 1 {
		t.Errorf("%d block rules for bob's attacker, want 1", n)
	}
	if n := blockRules(second, aliceIP.String()+"/32"); n != 1 {
		t.Errorf("%d block rules for alice's attacker, want 1", n)
	}
}
