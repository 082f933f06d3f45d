package test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/enforcement"
)

// BenchmarkEdgePropagation50 measures, with 50 edges attached to a 3-server
// cluster (each edge watches whichever server it picked: followers first),
// how long after a revocation's acknowledgement by the leader every edge
// enforces it (DESIGN.md §9 goal: p99 ≤ 25 ms). Each iteration is one
// revocation observed by all 50 edges; the delays are taken from the edges'
// view-publication hooks, with no polling. Run with -benchtime 40x for 2,000
// observations.
func BenchmarkEdgePropagation50(b *testing.B) {
	const nEdges = 50
	c, tok := startEdgeCluster(b)
	id := newIdentity(b, c, tok)
	id.createTenant(b, "prop", 0, 0)
	keys := make([]string, b.N)
	for i := range keys {
		_, keys[i] = id.createAPIKey(b, "prop", auth.RoleReadOnly)
	}
	var seeds []string
	for _, n := range c.running() {
		seeds = append(seeds, n.addr())
	}
	var (
		armed  atomic.Pointer[string] // key id being revoked
		mu     sync.Mutex
		seenAt = map[int]time.Time{}
	)
	var es []*enforcement.Edge
	for i := range nEdges {
		i := i
		e, err := enforcement.New(enforcement.Config{NodeID: fmt.Sprintf("p%02d", i), JoinToken: testJoinToken, Servers: seeds,
			Logger: c.logs.logger(fmt.Sprintf("p%02d", i)),
			OnView: func(v *enforcement.View) {
				k := armed.Load()
				if k == nil {
					return
				}
				if rec, ok := v.APIKey(*k); ok && !rec.RevokedAt.IsZero() {
					now := time.Now()
					mu.Lock()
					if _, dup := seenAt[i]; !dup {
						seenAt[i] = now
					}
					mu.Unlock()
				}
			}})
		if err != nil {
			b.Fatal(err)
		}
		e.Start()
		b.Cleanup(func() { e.Close() })
		es = append(es, e)
	}
	id.waitEdgesCurrent(b, es...)
	perServer := map[string]int{}
	for _, e := range es {
		perServer[e.Replica().Server()]++
	}
	var delays []time.Duration
	b.ResetTimer()
	for i := range b.N {
		mu.Lock()
		clear(seenAt)
		mu.Unlock()
		armed.Store(&keys[i])
		id.revokeAPIKey(b, "prop", keys[i])
		ack := time.Now()
		waitFor(b, 10*time.Second, "all 50 edges to enforce the revocation", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(seenAt) == nEdges
		})
		mu.Lock()
		for _, at := range seenAt {
			delays = append(delays, max(at.Sub(ack), 0))
		}
		mu.Unlock()
	}
	b.StopTimer()
	slices.Sort(delays)
	q := func(p float64) float64 {
		return float64(delays[min(len(delays)-1, int(p*float64(len(delays))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(float64(delays[len(delays)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(len(delays)), "observations")
	b.Logf("edges per server: %v", perServer)
}
