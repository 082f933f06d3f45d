//go:build linux

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// Edge checks under faults (DESIGN.md §5): valid requests through the edges
// keep succeeding whatever happens to the servers, and a revoked credential
// stops working everywhere within the propagation bound. They plug in as soon
// as the image has `allsource edge` and the API has API keys; until then
// every scenario reports "n/a" for them and the suite says why.

// edgePropagationBound is how long after a revocation is acknowledged the
// suite allows before a revoked key must be refused by every edge. The design
// goal is 25 ms p99 for connected edges; faults (an edge's server is cut off)
// justify more, but never unbounded: an edge leaves a silent server after 3
// watch heartbeats (at least 1 s), and a follower without a leader for 1 s
// sends its edges elsewhere, so a connected edge catches up within about 1.5 s.
const edgePropagationBound = 2 * time.Second

type edgeChecker interface {
	start(stop <-chan struct{})
	stop()
	// results: valid requests sent and failed, revoked-key requests accepted
	// after the propagation bound, and when the slowest edge first refused
	// the revoked key (measured from the revocation's acknowledgement).
	results() (requests, failures, revokedAccepted int, propagation time.Duration, details []string)
}

// edgeSupport says whether the image has the edge and the API has API keys,
// and if not, why.
var edgeSupport struct {
	sync.Once
	ok     bool
	reason string
}

func edgesAvailable(t *testing.T, img string, c *cluster) (bool, string) {
	edgeSupport.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := docker(ctx, "run", "--rm", "--label", labelSuite+"=1", "--label", labelOwner+"="+ownerLabel(),
			"--entrypoint", "/allsource", img, "edge", "-h")
		if strings.Contains(out+errString(err), "unknown command") {
			edgeSupport.reason = "the binary has no `allsource edge` command yet"
			return
		}
		l, err := c.leader(ctx)
		if err != nil {
			edgeSupport.reason = "no leader to probe the API: " + err.Error()
			return
		}
		st, body, _, _ := c.get(ctx, l, "/v1/tenants/none/api-keys")
		if st == http.StatusNotFound && strings.Contains(string(body), "no such endpoint") {
			edgeSupport.reason = "the API has no /v1/tenants/{t}/api-keys endpoint yet"
			return
		}
		edgeSupport.ok = true
	})
	return edgeSupport.ok, edgeSupport.reason
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// edgeNode is one edge container; upstream is the sample service behind it.
type edgeNode struct {
	id, container string
	ip            netip.Addr
}

func (e *edgeNode) url() string { return "http://" + netip.AddrPortFrom(e.ip, httpPort).String() }

// startEdges runs the sample upstream and two edges joined to the servers.
func (c *cluster) startEdges(ctx context.Context) ([]*edgeNode, error) {
	up := c.net.host(30)
	name := c.nodes[0].container[:strings.LastIndex(c.nodes[0].container, "-")]
	if _, err := docker(ctx, "run", "-d", "--name", name+"-upstream", "--network", c.net.name, "--ip", up.String(),
		"--label", labelSuite+"=1", "--label", labelOwner+"="+ownerLabel(), "--entrypoint", "/upstream", c.image,
		"-addr", ":9000"); err != nil {
		return nil, err
	}
	c.extra = append(c.extra, name+"-upstream")
	var seeds []string
	for _, n := range c.nodes {
		seeds = append(seeds, n.httpAddr())
	}
	var edges []*edgeNode
	for i := 1; i <= 2; i++ {
		e := &edgeNode{id: fmt.Sprintf("e%d", i), container: fmt.Sprintf("%s-e%d", name, i), ip: c.net.host(19 + i)}
		_, err := dockerEnv(ctx, []string{"ALLSOURCE_JOIN_TOKEN=" + c.joinToken}, "run", "-d", "--name", e.container,
			"--hostname", e.id, "--network", c.net.name, "--ip", e.ip.String(), "--label", labelSuite+"=1",
			"--label", labelOwner+"="+ownerLabel(), "-e", "ALLSOURCE_JOIN_TOKEN", "--tmpfs", "/data:uid=65532,gid=65532",
			c.image, "edge", "-node-id", e.id, "-data-dir", "/data", "-http-addr", fmt.Sprintf("0.0.0.0:%d", httpPort),
			"-gossip-addr", fmt.Sprintf("0.0.0.0:%d", gossipPort), "-join", strings.Join(seeds, ","),
			"-upstream", "http://"+up.String()+":9000")
		c.extra = append(c.extra, e.container)
		if err != nil {
			return nil, err
		}
		edges = append(edges, e)
	}
	return edges, nil
}

// edgeTraffic sends requests through the edges with a valid API key all the
// time, and with a key it revokes once the run is under way.
type edgeTraffic struct {
	r        *run
	edges    []*edgeNode
	tenant   string
	valid    string
	revoked  string
	revokeID string
	http     *http.Client

	mu            sync.Mutex
	requests      int
	failures      int
	revokedOK     int
	revokedAt     time.Time                // when the revocation was acknowledged
	refusedAfter  map[string]time.Duration // edge → first refusal of the revoked key after the acknowledgement
	details       []string
	wg            sync.WaitGroup
	revokeAfter   time.Duration
	revokeFailure string
}

func newEdgeChecker(t *testing.T, c *cluster, r *run) edgeChecker {
	if len(c.edges) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	et := &edgeTraffic{r: r, edges: c.edges, tenant: r.prefix + "-edge", http: &http.Client{Timeout: 2 * time.Second},
		revokeAfter: r.sc.warmup + r.sc.fault/2, refusedAfter: map[string]time.Duration{}}
	a := newAPIClient(r.sc.load.workers+2, c.token, r.prefix+"-edge", r.hist, 10*time.Second)
	defer a.close()
	r.mustDo(ctx, a, opCreate, et.tenant, 0)
	// The edge traffic must never meet the tenant's rate limit: a 429 here
	// would be the limit working, not a failure.
	r.mustDo(ctx, a, opSetRPM, et.tenant, 6_000_000)
	var err error
	if et.valid, _, err = c.createAPIKey(ctx, et.tenant, "valid"); err != nil {
		t.Fatalf("edge checks: create API key: %v", err)
	}
	if et.revoked, et.revokeID, err = c.createAPIKey(ctx, et.tenant, "to-revoke"); err != nil {
		t.Fatalf("edge checks: create API key: %v", err)
	}
	// Both keys must work through every edge before the faults start.
	for _, e := range c.edges {
		for _, k := range []string{et.valid, et.revoked} {
			if err := poll(ctx, 30*time.Second, 50*time.Millisecond, func() (bool, error) {
				st, err := et.send(e, k)
				return st == http.StatusOK, err
			}); err != nil {
				t.Fatalf("edge checks: a fresh key does not work through %s: %v", e.id, err)
			}
		}
	}
	return et
}

func (c *cluster) createAPIKey(ctx context.Context, tenant, name string) (key, id string, err error) {
	err = poll(ctx, 30*time.Second, 100*time.Millisecond, func() (bool, error) {
		l, err := c.leader(ctx)
		if err != nil {
			return false, err
		}
		b, _ := json.Marshal(map[string]string{"name": name, "role": "readonly"})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, l.baseURL()+"/v1/tenants/"+tenant+"/api-keys", bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+c.token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(req)
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		var out struct {
			ID  string `json:"id"`
			Key string `json:"key"`
		}
		if resp.StatusCode != http.StatusCreated {
			body, _ := io.ReadAll(resp.Body)
			return false, fmt.Errorf("%s: %s", resp.Status, body)
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			return false, err
		}
		key, id = out.Key, out.ID
		return true, nil
	})
	return key, id, err
}

func (et *edgeTraffic) send(e *edgeNode, key string) (int, error) {
	st, _, err := et.sendDetail(e, key)
	return st, err
}

// sendDetail is send that also describes a refusal: the error code and, for
// a 429, the limit the edge applied (X-RateLimit-Limit), so that a failure in
// the report says which policy the edge enforced.
func (et *edgeTraffic) sendDetail(e *edgeNode, key string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodGet, e.url()+"/faults/check", nil)
	req.Header.Set("X-API-Key", key)
	resp, err := et.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, "", nil
	}
	detail := strings.TrimSpace(string(body))
	if l := resp.Header.Get("X-RateLimit-Limit"); l != "" {
		detail += fmt.Sprintf(" (X-RateLimit-Limit %s, Remaining %s, Retry-After %s)", l,
			resp.Header.Get("X-RateLimit-Remaining"), resp.Header.Get("Retry-After"))
	}
	return resp.StatusCode, detail, nil
}

func (et *edgeTraffic) start(stop <-chan struct{}) {
	start := time.Now()
	et.wg.Add(2)
	go func() { // valid traffic
		defer et.wg.Done()
		rnd := mrand.New(mrand.NewPCG(uint64(start.UnixNano()), 7))
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			e := et.edges[rnd.IntN(len(et.edges))]
			sent := et.r.hist.now()
			st, detail, err := et.sendDetail(e, et.valid)
			took := time.Duration(et.r.hist.now() - sent)
			et.mu.Lock()
			et.requests++
			if st != http.StatusOK {
				et.failures++
				if len(et.details) < 10 {
					et.details = append(et.details, fmt.Sprintf("valid request through %s sent at %s failed after %v: %d %s %v (%s)",
						e.id, offset(sent), took.Round(time.Millisecond), st, detail, errString(err), et.r.timeline()))
				}
			}
			et.mu.Unlock()
		}
	}()
	go func() { // revocation, then the revoked key must stay refused
		defer et.wg.Done()
		select {
		case <-stop:
			return
		case <-time.After(et.revokeAfter):
		}
		if err := et.revoke(); err != nil {
			et.mu.Lock()
			et.revokeFailure = err.Error()
			et.mu.Unlock()
			return
		}
		// The revoked key is tried until the scenario stops — and, when the
		// revocation was acknowledged only just before that (a revocation
		// sent to a cut-off leader is retried until a new leader takes it),
		// on past the stop until every edge has refused it or the bound
		// (plus slack) has passed, so each edge is judged.
		stopping := false
		for {
			select {
			case <-stop:
				stopping = true
			case <-time.After(10 * time.Millisecond):
			}
			if stopping {
				et.mu.Lock()
				done := len(et.refusedAfter) == len(et.edges) || time.Since(et.revokedAt) > edgePropagationBound+2*time.Second
				et.mu.Unlock()
				if done {
					return
				}
				time.Sleep(10 * time.Millisecond) // pacing the checks after the stop
			}
			for _, e := range et.edges {
				sent := time.Now()
				st, err := et.send(e, et.revoked)
				if err == nil && (st == http.StatusUnauthorized || st == http.StatusForbidden) {
					et.mu.Lock()
					if _, ok := et.refusedAfter[e.id]; !ok {
						et.refusedAfter[e.id] = time.Since(et.revokedAt)
					}
					et.mu.Unlock()
				}
				if err == nil && st == http.StatusOK && sent.Sub(et.revokedAt) > edgePropagationBound {
					et.mu.Lock()
					et.revokedOK++
					if len(et.details) < 10 {
						et.details = append(et.details, fmt.Sprintf("revoked key accepted by %s %v after the revocation",
							e.id, sent.Sub(et.revokedAt).Round(time.Millisecond)))
					}
					et.mu.Unlock()
				}
			}
		}
	}()
}

// revoke deletes the key through any server until the deletion is
// acknowledged (retrying an ambiguous attempt is safe: revoking twice is a
// 404 at worst).
func (et *edgeTraffic) revoke() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return poll(ctx, time.Minute, 100*time.Millisecond, func() (bool, error) {
		l, err := et.r.c.leader(ctx)
		if err != nil {
			return false, err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, l.baseURL()+"/v1/tenants/"+et.tenant+"/api-keys/"+et.revokeID, nil)
		req.Header.Set("Authorization", "Bearer "+et.r.c.token)
		resp, err := et.r.c.http.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotFound {
			et.mu.Lock()
			et.revokedAt = time.Now()
			et.mu.Unlock()
			return true, nil
		}
		return false, fmt.Errorf("revoke: %s", resp.Status)
	})
}

func (et *edgeTraffic) stop() { et.wg.Wait() }

func (et *edgeTraffic) results() (int, int, int, time.Duration, []string) {
	et.mu.Lock()
	defer et.mu.Unlock()
	d := append([]string(nil), et.details...)
	if et.revokeFailure != "" {
		d = append(d, "could not revoke the key: "+et.revokeFailure)
	}
	// The slowest edge's first refusal (-1 if one never refused it).
	var slowest time.Duration
	for _, e := range et.edges {
		after, ok := et.refusedAfter[e.id]
		if !ok && !et.revokedAt.IsZero() {
			d = append(d, fmt.Sprintf("edge %s never refused the revoked key (revocation acknowledged at %s)", e.id, et.revokedAt.Format("15:04:05.000")))
			slowest = -1
			break
		}
		slowest = max(slowest, after)
	}
	return et.requests, et.failures, et.revokedOK, slowest, d
}
