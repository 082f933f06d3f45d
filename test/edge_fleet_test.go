package test

import (
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/enforcement"
)

// TestEdgeFleetLimit runs five edges that gossip their demand (real
// memberlist over loopback, through the servers' gossip) in front of one
// tenant limited to 6,000 requests per minute (100/s). The load is skewed —
// one edge takes 80% of 400 requests/s, the other four 5% each — and the
// requests admitted by the whole fleet over the measured window must come
// within ±10% of the limit (five naive local buckets would admit up to 5×).
// LONG=1 measures for 60 s instead of 15 s.
func TestEdgeFleetLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	c := newInprocCluster(t)
	n1 := c.add("s1")
	// Four times the limit from one key for seconds on end is exactly what
	// the threat detector's automatic responses act on (they would revoke
	// the key mid-measurement): this test measures the limiter alone.
	n1.cfg.Threat.Disabled = true
	shareRootKey(t, n1)
	c.start(n1)
	tok := operatorToken(t, n1)
	id := newIdentity(t, c, tok)
	const rpm, burst = 6000, 100
	id.createTenant(t, "fleet", rpm, burst)
	key, _ := id.createAPIKey(t, "fleet", auth.RoleReadOnly)

	const edges = 5
	var nodes []*edgeNode
	var es []*enforcement.Edge
	for i := range edges {
		n := newEdgeNode(t, c, "f"+string(rune('1'+i)), "", nil)
		nodes = append(nodes, n)
		es = append(es, n.edge())
	}
	id.waitEdgesCurrent(t, es...)
	waitFor(t, 30*time.Second, "every edge to hear from the other four", func() bool {
		for _, e := range es {
			if e.Fleet().Status().Peers != edges-1 {
				return false
			}
		}
		return true
	})

	warm, window := 5*time.Second, 15*time.Second
	if os.Getenv("LONG") != "" {
		window = 60 * time.Second
	}
	const total = 400.0 // requests/s offered, 4× the limit
	shares := []float64{0.8, 0.05, 0.05, 0.05, 0.05}
	start := time.Now()
	measureFrom, measureTo := start.Add(warm), start.Add(warm+window)
	var mu sync.Mutex
	admitted := make([]int, edges)
	offered := make([]int, edges)
	var wg sync.WaitGroup
	for i, e := range es {
		wg.Add(1)
		go func(i int, e *enforcement.Edge) {
			defer wg.Done()
			interval := time.Duration(float64(time.Second) / (total * shares[i]))
			r := &enforcement.Request{Method: "GET", Path: "/orders", RemoteAddr: "192.0.2.10:4000",
				Header: http.Header{"X-Api-Key": {key}}}
			for k := 0; ; k++ {
				due := start.Add(time.Duration(k) * interval)
				if due.After(measureTo) {
					return
				}
				if d := time.Until(due); d > 0 {
					time.Sleep(d) // pacing the offered load, not waiting for a condition
				}
				d := e.Pipeline().Decide(r)
				if d.Status != http.StatusOK && d.Status != http.StatusTooManyRequests {
					t.Errorf("edge %d: unexpected %d %s", i, d.Status, d.Message)
					return
				}
				if now := time.Now(); !now.Before(measureFrom) && now.Before(measureTo) {
					mu.Lock()
					offered[i]++
					if d.Allowed {
						admitted[i]++
					}
					mu.Unlock()
				}
			}
		}(i, e)
	}
	wg.Wait()
	sum, off := 0, 0
	for i := range admitted {
		sum += admitted[i]
		off += offered[i]
	}
	limit := float64(rpm) / 60 * window.Seconds()
	ratio := float64(sum) / limit
	t.Logf("fleet limit %d/min over %v with %d edges, skewed load %v of %.0f req/s: offered %d, admitted %d = %.3f× the limit (per edge %v)",
		rpm, window, edges, shares, total, off, sum, ratio, admitted)
	if ratio < 0.9 || ratio > 1.1 {
		t.Fatalf("the fleet admitted %.1f%% of its limit; want within ±10%%", 100*ratio)
	}
	if admitted[0] < admitted[1]*4 {
		t.Fatalf("the busy edge did not get the larger share: %v", admitted)
	}
}
