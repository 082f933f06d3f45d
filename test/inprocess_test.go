package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/internal/server"
)

const testJoinToken = "system-test-join-token-0123456789"

// inprocNode is one server started in this process through internal/server,
// with fixed loopback ports so that a restart comes back at the same
// addresses, on the same data dir.
type inprocNode struct {
	cfg    server.Config
	srv    *server.Server
	tokens chan string // the operator token a bootstrap server generated
}

func (n *inprocNode) addr() string { return n.cfg.HTTPAddr }
func (n *inprocNode) id() string   { return n.cfg.NodeID }

// inprocCluster starts and stops in-process servers for one test.
type inprocCluster struct {
	t     testing.TB
	logs  *logSink
	nodes map[string]*inprocNode
	dir   string // the servers' data dirs live below it
}

func newInprocCluster(t testing.TB) *inprocCluster {
	// The data dirs' parent is made before the cleanup that stops the
	// servers is registered, so it is removed after they stopped (cleanups
	// run last-in first-out; a data dir made by t.TempDir in add was removed
	// while its server still wrote to it: "directory not empty").
	c := &inprocCluster{t: t, logs: newLogSink(t), nodes: map[string]*inprocNode{}, dir: t.TempDir()}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.stop(n)
		}
	})
	return c
}

// add configures a server: bootstrap when join is empty, otherwise join
// through the given HTTP addresses. Gossip is on, with fast intervals.
func (c *inprocCluster) add(id string, join ...string) *inprocNode {
	p := reservePorts(c.t, 3)
	n := &inprocNode{tokens: make(chan string, 1)}
	dataDir, err := os.MkdirTemp(c.dir, id+"-")
	if err != nil {
		c.t.Fatal(err)
	}
	n.cfg = server.Config{
		NodeID: id, DataDir: dataDir,
		HTTPAddr: loopback(p[0]), RaftAddr: loopback(p[1]), GossipAddr: loopback(p[2]),
		Bootstrap: len(join) == 0, Join: join, JoinToken: testJoinToken,
		LogLevel: "info", LogFormat: "text", MaxBodyBytes: 1 << 20, Version: "system-test",
		QuietToken: true, FastGossip: true,
		OnOperatorToken: func(tok string) {
			select {
			case n.tokens <- tok:
			default:
			}
		},
	}
	if err := n.cfg.Validate(); err != nil {
		c.t.Fatalf("config of %s: %v", id, err)
	}
	c.nodes[id] = n
	return n
}

// start starts (or restarts) a configured server.
func (c *inprocCluster) start(n *inprocNode) {
	c.t.Helper()
	srv, err := server.Start(context.Background(), n.cfg, c.logs.logger(n.id()))
	if err != nil {
		c.t.Fatalf("start %s: %v", n.id(), err)
	}
	n.srv = srv
}

// stop closes a running server (the in-process equivalent of killing it:
// its listeners, raft and gossip go away; its data dir stays).
func (c *inprocCluster) stop(n *inprocNode) {
	if n.srv == nil {
		return
	}
	if err := n.srv.Close(); err != nil {
		c.t.Logf("close %s: %v", n.id(), err)
	}
	n.srv = nil
}

func (c *inprocCluster) running() []*inprocNode {
	var out []*inprocNode
	for _, n := range c.nodes {
		if n.srv != nil {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *inprocNode) int { return compareStrings(a.id(), b.id()) })
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// leader waits until exactly one running server leads and every running
// server agrees on it.
func (c *inprocCluster) leader(t testing.TB) *inprocNode {
	t.Helper()
	var l *inprocNode
	waitFor(t, 15*time.Second, "one leader that every running server knows", func() bool {
		l = nil
		run := c.running()
		for _, n := range run {
			if n.srv.Node().IsLeader() {
				if l != nil {
					return false
				}
				l = n
			}
		}
		if l == nil {
			return false
		}
		for _, n := range run {
			if id, _ := n.srv.Node().Leader(); id != l.id() {
				return false
			}
		}
		return true
	})
	return l
}

// waitGossip waits until every running server sees every other running
// server alive over gossip, with its HTTP address.
func (c *inprocCluster) waitGossip(t testing.TB) {
	t.Helper()
	run := c.running()
	waitFor(t, 20*time.Second, "gossip to connect every running server", func() bool {
		for _, n := range run {
			g := n.srv.Node().Gossip()
			for _, o := range run {
				m, ok := g.Member(o.id())
				if !ok || m.Meta.HTTPAddr != o.addr() {
					return false
				}
			}
		}
		return true
	})
}

func (c *inprocCluster) followers() []*inprocNode {
	var out []*inprocNode
	for _, n := range c.running() {
		if !n.srv.Node().IsLeader() {
			out = append(out, n)
		}
	}
	return out
}

func operatorToken(t testing.TB, n *inprocNode) string {
	t.Helper()
	select {
	case tok := <-n.tokens:
		return tok
	case <-time.After(scaled(20 * time.Second)):
		t.Fatalf("%s printed no operator token", n.id())
	}
	return ""
}

// indexTrack asserts that X-Raft-Index is present and never goes down over
// a sequence of answers in one session (one server, or "the leader" across
// servers).
type indexTrack struct {
	last map[string]uint64
}

func (it *indexTrack) see(t testing.TB, node, what string, r *resp) uint64 {
	t.Helper()
	idx, ok := r.index()
	if !ok {
		t.Fatalf("%s on %s: no X-Raft-Index header (%s)", what, node, r)
	}
	if idx < it.last[node] {
		t.Fatalf("%s on %s: X-Raft-Index went back from %d to %d", what, node, it.last[node], idx)
	}
	it.last[node] = idx
	return idx
}

// TestClusterInProcess runs three real servers in this process over loopback
// TCP and walks a cluster's life: bootstrap and join (non-voters promoted),
// writes forwarded from a follower and ?redirect, reads at every consistency
// level, loss of the leader (failover time measured), restart and catch-up,
// leadership transfer, removal, and a snapshot restored into a fresh cluster.
func TestClusterInProcess(t *testing.T) {
	c := newInprocCluster(t)
	api := newAPIClient(scaled(10 * time.Second))
	n1 := c.add("n1")
	c.start(n1)
	tok := operatorToken(t, n1)
	n2 := c.add("n2", n1.addr())
	n3 := c.add("n3", n1.addr())
	c.start(n2)
	c.start(n3)

	step := func(name string, fn func(t *testing.T)) {
		if !t.Run(name, fn) {
			t.FailNow()
		}
	}

	step("join_and_promote", func(t *testing.T) {
		// Each server sees all three as voters: the joiners came in as
		// non-voters and the leader promoted them once they caught up.
		for _, n := range c.running() {
			waitFor(t, 20*time.Second, n.id()+" to see 3 voters", func() bool {
				ms, err := api.members(n.addr(), tok)
				v, total := voters(ms)
				return err == nil && v == 3 && total == 3
			})
		}
		ms, err := api.members(n2.addr(), tok)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.HTTPAddr != c.nodes[m.ID].addr() {
				t.Errorf("member %s: http_addr %q, want %q", m.ID, m.HTTPAddr, c.nodes[m.ID].addr())
			}
		}
	})

	idx := &indexTrack{last: map[string]uint64{}}
	var writeIdx uint64
	step("write_via_follower", func(t *testing.T) {
		leader := c.leader(t)
		f := c.followers()[0]
		r := api.must(t, http.StatusCreated, http.MethodPost, f.addr(), "/v1/tenants", tok,
			map[string]string{"id": "acme", "name": "Acme Inc", "tier": "professional"})
		writeIdx = idx.see(t, f.id(), "create tenant", r)
		// The leader has it at the acknowledged index, without waiting.
		if got := leader.srv.Node().AppliedIndex(); got < writeIdx {
			t.Fatalf("leader applied index %d is behind the acknowledged write at %d", got, writeIdx)
		}
		api.must(t, http.StatusOK, http.MethodGet, leader.addr(), "/v1/tenants/acme?consistency=stale", tok, nil)
		if n := metricValue(t, api, f.addr(), tok, "allsource_http_forwarded_total"); n < 1 {
			t.Fatalf("follower %s counted %v forwarded requests, want ≥ 1", f.id(), n)
		}
		// The early-election counters are exported, one series per cause.
		for _, cause := range []string{"silence", "vote_request"} {
			metricValue(t, api, f.addr(), tok, `allsource_raft_election_kicks_total{cause="`+cause+`"}`)
		}

		// ?redirect answers 307 with the leader's address instead.
		r = api.must(t, http.StatusTemporaryRedirect, http.MethodPost, f.addr(), "/v1/tenants?redirect", tok,
			map[string]string{"id": "redirected", "name": "Not created"})
		loc, err := url.Parse(r.Header.Get("Location"))
		if err != nil || loc.Host != leader.addr() || loc.Path != "/v1/tenants" {
			t.Fatalf("redirect Location %q, want http://%s/v1/tenants?redirect", r.Header.Get("Location"), leader.addr())
		}
		api.must(t, http.StatusNotFound, http.MethodGet, leader.addr(), "/v1/tenants/redirected", tok, nil)
		// Following the redirect by hand creates it on the leader.
		r = api.must(t, http.StatusCreated, http.MethodPost, loc.Host, loc.RequestURI(), tok,
			map[string]string{"id": "redirected", "name": "Created on the leader"})
		idx.see(t, leader.id(), "create via redirect", r)
		api.must(t, http.StatusOK, http.MethodPut, f.addr(), "/v1/tenants/acme/rate-limit", tok,
			map[string]int{"requests_per_minute": 1200, "burst": 150})
	})

	step("read_consistency_levels", func(t *testing.T) {
		f := c.followers()[0]
		// Stale reads answer from the follower's own state: it sees the write
		// once it has applied it.
		waitFor(t, 10*time.Second, "the follower to apply the write", func() bool {
			return f.srv.Node().AppliedIndex() >= writeIdx
		})
		for i := 0; i < 3; i++ {
			r := api.must(t, http.StatusOK, http.MethodGet, f.addr(), "/v1/tenants/acme?consistency=stale", tok, nil)
			if got := idx.see(t, f.id()+"/stale", "stale read", r); got < writeIdx {
				t.Fatalf("stale read after the follower applied %d answered at %d", writeIdx, got)
			}
		}
		// Default and linearizable reads are answered by the leader (forwarded),
		// after the acknowledged write.
		for _, q := range []string{"", "?consistency=default", "?consistency=linearizable"} {
			for _, n := range c.running() {
				r := api.must(t, http.StatusOK, http.MethodGet, n.addr(), "/v1/tenants/acme"+q, tok, nil)
				got := idx.see(t, "leader-session", "read"+q+" via "+n.id(), r)
				if got < writeIdx {
					t.Fatalf("read%s via %s answered at index %d, before the acknowledged write at %d", q, n.id(), got, writeIdx)
				}
			}
		}
		api.must(t, http.StatusBadRequest, http.MethodGet, f.addr(), "/v1/tenants/acme?consistency=eventual", tok, nil)
	})

	var survivorTenant string
	var killed *inprocNode
	step("kill_leader_failover", func(t *testing.T) {
		killed = c.leader(t)
		start := time.Now()
		c.stop(killed)
		closed := time.Since(start)
		survivors := c.running()
		quick := newAPIClient(scaled(2 * time.Second))
		var attempts int
		var acked time.Duration
		waitFor(t, 20*time.Second, "a write acknowledged after the leader was lost", func() bool {
			attempts++
			n := survivors[attempts%len(survivors)]
			id := fmt.Sprintf("after-failover-%d", attempts)
			r, err := quick.call(http.MethodPost, n.addr(), "/v1/tenants", tok, map[string]string{"id": id, "name": "After failover"})
			if err != nil || r.Status != http.StatusCreated {
				return false
			}
			acked = time.Since(start)
			survivorTenant = id
			return true
		})
		t.Logf("leader %s lost: first write acknowledged %v after the kill began (%v after Close returned; Close took %v; %d attempts)",
			killed.id(), acked.Round(time.Millisecond), (acked - closed).Round(time.Millisecond), closed.Round(time.Millisecond), attempts)
		nl := c.leader(t)
		if nl == killed {
			t.Fatal("the killed server still leads")
		}
		// More writes while it is down, through every survivor.
		for i, n := range survivors {
			api.must(t, http.StatusCreated, http.MethodPost, n.addr(), "/v1/tenants", tok,
				map[string]string{"id": fmt.Sprintf("while-down-%d", i), "name": "Written while a server was down"})
		}
	})

	step("restart_catch_up", func(t *testing.T) {
		leader := c.leader(t)
		target := leader.srv.Node().AppliedIndex()
		c.start(killed)
		waitFor(t, 20*time.Second, killed.id()+" to catch up with the leader's applied index", func() bool {
			return killed.srv != nil && killed.srv.Node().AppliedIndex() >= target
		})
		for _, ten := range []string{survivorTenant, "while-down-0", "while-down-1"} {
			waitFor(t, 10*time.Second, killed.id()+" to serve "+ten+" with a stale read", func() bool {
				r, err := api.call(http.MethodGet, killed.addr(), "/v1/tenants/"+ten+"?consistency=stale", tok, nil)
				return err == nil && r.Status == http.StatusOK
			})
		}
		waitFor(t, 20*time.Second, "3 voters again", func() bool {
			ms, err := api.members(leader.addr(), tok)
			v, total := voters(ms)
			return err == nil && v == 3 && total == 3
		})
		// Gossip has re-formed: every server knows every other's HTTP address
		// again (followers need the leader's to forward).
		c.waitGossip(t)
	})

	step("leadership_transfer", func(t *testing.T) {
		old := c.leader(t)
		// Hand leadership to the server that was restarted, through a follower.
		var via *inprocNode
		for _, n := range c.followers() {
			if n != killed {
				via = n
			}
		}
		if via == nil {
			via = c.followers()[0]
		}
		body := map[string]string{"id": killed.id()}
		if old == killed {
			body = nil // it leads already: let raft pick the most up-to-date follower
		}
		r := api.must(t, http.StatusOK, http.MethodPost, via.addr(), "/v1/cluster/leadership-transfer", tok, body)
		var out struct{ PreviousLeader, Leader string }
		r.decode(t, &out)
		waitFor(t, 10*time.Second, "leadership to move away from "+old.id(), func() bool {
			l := c.leader(t)
			return l != old && (body == nil || l == killed)
		})
		api.must(t, http.StatusCreated, http.MethodPost, old.addr(), "/v1/tenants", tok,
			map[string]string{"id": "after-transfer", "name": "After transfer"})
	})

	step("remove_member", func(t *testing.T) {
		leader := c.leader(t)
		victim := c.followers()[0]
		via := c.followers()[1]
		api.must(t, http.StatusNoContent, http.MethodDelete, via.addr(), "/v1/cluster/members/"+victim.id(), tok, nil)
		ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
		defer cancel()
		if err := leader.srv.Node().WaitForRemoval(ctx, victim.id()); err != nil {
			t.Fatalf("wait for removal of %s: %v", victim.id(), err)
		}
		c.stop(victim)
		ms, err := api.members(leader.addr(), tok)
		if err != nil {
			t.Fatal(err)
		}
		if v, total := voters(ms); v != 2 || total != 2 {
			t.Fatalf("after removing %s: %d voters of %d servers, want 2 of 2: %+v", victim.id(), v, total, ms)
		}
		api.must(t, http.StatusNotFound, http.MethodDelete, via.addr(), "/v1/cluster/members/"+victim.id(), tok, nil)
		for _, n := range c.running() {
			api.must(t, http.StatusCreated, http.MethodPost, n.addr(), "/v1/tenants", tok,
				map[string]string{"id": "after-remove-" + n.id(), "name": "After removal"})
		}
	})

	step("snapshot_restore_fresh_cluster", func(t *testing.T) {
		src := c.followers()[0]
		before := clusterState(t, api, src.addr(), tok)
		snap := api.must(t, http.StatusOK, http.MethodGet, src.addr(), "/v1/cluster/snapshot", tok, nil)
		if _, ok := snap.index(); !ok || len(snap.Body) == 0 {
			t.Fatalf("snapshot download: %d bytes, X-Raft-Index %q", len(snap.Body), snap.Header.Get("X-Raft-Index"))
		}

		c2 := newInprocCluster(t) // a separate cluster
		fresh := c2.add("r1")
		c2.start(fresh)
		freshTok := operatorToken(t, fresh)
		if freshTok == tok {
			t.Fatal("the fresh cluster generated the same operator token")
		}
		if l := c2.leader(t); l != fresh {
			t.Fatalf("the fresh single-server cluster is led by %s", l.id())
		}
		api.must(t, http.StatusOK, http.MethodGet, fresh.addr(), "/v1/tenants", freshTok, nil)
		api.must(t, http.StatusNotFound, http.MethodGet, fresh.addr(), "/v1/tenants/acme", freshTok, nil)
		preIdx := fresh.srv.Node().AppliedIndex()

		r := api.must(t, http.StatusOK, http.MethodPut, fresh.addr(), "/v1/cluster/snapshot", freshTok, snap.Body)
		t.Logf("restored %d bytes into r1: %s", len(snap.Body), r)

		// Backup semantics: the restored state carries the source cluster's
		// operator credential; the fresh cluster's own token is gone with the
		// state it replaced.
		// (Right after the restore the server may still say it is catching up
		// — 503, never "invalid" — until it has marked itself caught up.)
		waitFor(t, 10*time.Second, "the replaced operator token to be refused", func() bool {
			r, err := api.call(http.MethodGet, fresh.addr(), "/v1/tenants", freshTok, nil)
			if err == nil && r.Status != http.StatusUnauthorized && r.Status != http.StatusServiceUnavailable {
				t.Fatalf("the replaced operator token: %s, want 401 (or 503 while catching up)", r)
			}
			return err == nil && r.Status == http.StatusUnauthorized
		})
		after := clusterState(t, api, fresh.addr(), tok)
		if d := before.diff(after); d != "" {
			t.Fatalf("restored state differs from the source: %s", d)
		}
		api.must(t, http.StatusOK, http.MethodGet, fresh.addr(), "/v1/audit/verify", tok, nil)

		// The restored cluster goes on: writes and reads, with indexes that
		// keep growing past everything seen before the restore.
		w := api.must(t, http.StatusCreated, http.MethodPost, fresh.addr(), "/v1/tenants", tok,
			map[string]string{"id": "after-restore", "name": "After restore"})
		wi, _ := w.index()
		snapIdx, _ := snap.index()
		if wi <= preIdx || wi <= snapIdx {
			t.Errorf("first write after the restore committed at index %d; want past the fresh cluster's %d and the snapshot's %d", wi, preIdx, snapIdx)
		}
		lr := api.must(t, http.StatusOK, http.MethodGet, fresh.addr(), "/v1/tenants/after-restore?consistency=linearizable", tok, nil)
		if li, _ := lr.index(); li < wi {
			t.Errorf("linearizable read after the write at %d answered at %d", wi, li)
		}

		// A server joining the restored cluster gets the restored state (raft
		// sends it the snapshot) and the writes after it.
		want := clusterState(t, api, fresh.addr(), tok)
		r2 := c2.add("r2", fresh.addr())
		c2.start(r2)
		waitFor(t, 20*time.Second, "r2 to serve after-restore with a stale read", func() bool {
			r, err := api.call(http.MethodGet, r2.addr(), "/v1/tenants/after-restore?consistency=stale", tok, nil)
			return err == nil && r.Status == http.StatusOK
		})
		if d := want.diff(clusterStateAt(t, api, r2.addr(), tok, "stale")); d != "" {
			t.Errorf("r2's state after joining the restored cluster differs from r1's: %s", d)
		}
	})
}

// metricValue reads one series (name and labels, as /metrics prints them)
// from a server's /metrics; the test fails when it is missing.
func metricValue(t testing.TB, api *apiClient, addr, tok, series string) float64 {
	t.Helper()
	r := api.must(t, http.StatusOK, http.MethodGet, addr, "/metrics", tok, nil)
	for _, line := range strings.Split(string(r.Body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics of %s", series, addr)
	return 0
}

// stateView is what the API shows of a cluster's tenants, their rate limits
// and their audit chains; a restored backup must show the same.
type stateView struct {
	Tenants    map[string]json.RawMessage
	RateLimits map[string]json.RawMessage
	Audit      map[string][]json.RawMessage
}

// clusterState reads every tenant, its rate limit and its whole audit log
// through the API, with linearizable reads on the leader.
func clusterState(t testing.TB, api *apiClient, addr, tok string) stateView {
	t.Helper()
	return clusterStateAt(t, api, addr, tok, "linearizable")
}

// clusterStateAt is clusterState at the given read consistency.
func clusterStateAt(t testing.TB, api *apiClient, addr, tok, consistency string) stateView {
	t.Helper()
	v := stateView{Tenants: map[string]json.RawMessage{}, RateLimits: map[string]json.RawMessage{},
		Audit: map[string][]json.RawMessage{}}
	cursor := ""
	for {
		r := api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants?consistency="+consistency+"&limit=1000&cursor="+url.QueryEscape(cursor), tok, nil)
		var page struct {
			Tenants []json.RawMessage `json:"tenants"`
			Next    string            `json:"next_cursor"`
		}
		r.decode(t, &page)
		for _, raw := range page.Tenants {
			var ten struct{ ID string }
			if err := json.Unmarshal(raw, &ten); err != nil {
				t.Fatal(err)
			}
			v.Tenants[ten.ID] = raw
		}
		if page.Next == "" {
			break
		}
		cursor = page.Next
	}
	for id := range v.Tenants {
		r := api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/"+id+"/rate-limit?consistency="+consistency, tok, nil)
		v.RateLimits[id] = r.Body
		cursor := ""
		for {
			r := api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/"+id+"/audit?consistency="+consistency+"&limit=1000&cursor="+cursor, tok, nil)
			var page struct {
				Entries []json.RawMessage `json:"entries"`
				Next    string            `json:"next_cursor"`
			}
			r.decode(t, &page)
			v.Audit[id] = append(v.Audit[id], page.Entries...)
			if page.Next == "" {
				break
			}
			cursor = page.Next
		}
	}
	return v
}

// diff describes the first differences between two views ("" when equal).
func (a stateView) diff(b stateView) string {
	var out []string
	cmp := func(kind string, x, y map[string]json.RawMessage) {
		for k, xv := range x {
			yv, ok := y[k]
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("%s %s missing", kind, k))
			case !jsonEqual(xv, yv):
				out = append(out, fmt.Sprintf("%s %s: %s, want %s", kind, k, yv, xv))
			}
		}
		for k := range y {
			if _, ok := x[k]; !ok {
				out = append(out, fmt.Sprintf("%s %s unexpected", kind, k))
			}
		}
	}
	cmp("tenant", a.Tenants, b.Tenants)
	cmp("rate limit", a.RateLimits, b.RateLimits)
	for k, xs := range a.Audit {
		ys := b.Audit[k]
		if len(xs) != len(ys) {
			out = append(out, fmt.Sprintf("audit of %s: %d entries, want %d", k, len(ys), len(xs)))
			continue
		}
		for i := range xs {
			if !jsonEqual(xs[i], ys[i]) {
				out = append(out, fmt.Sprintf("audit of %s entry %d: %s, want %s", k, i, ys[i], xs[i]))
				break
			}
		}
	}
	if len(a.Tenants) == 0 {
		out = append(out, "no tenants at all")
	}
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("and %d more", len(out)-5))
	}
	return strings.Join(out, "; ")
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(x, y)
}
