package enforcement

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/allsource/guard/internal/tally"
)

func TestDemandReportEncoding(t *testing.T) {
	demand := map[string]float64{}
	for i := range 300 { // several UDP-sized parts
		demand[fmt.Sprintf("tenant-%03d-with-a-long-name", i)] = float64(i) + 0.5
	}
	msgs := encodeDemand("edge-7", 42, demand)
	if len(msgs) < 2 {
		t.Fatalf("%d parts", len(msgs))
	}
	got := map[string]float64{}
	for i, m := range msgs {
		if len(m) > maxDemandMsg {
			t.Fatalf("part %d has %d bytes", i, len(m))
		}
		node, seq, part, parts, d, err := decodeDemand(m)
		if err != nil || node != "edge-7" || seq != 42 || part != i || parts != len(msgs) {
			t.Fatalf("part %d: %v %q %d %d/%d", i, err, node, seq, part, parts)
		}
		for k, v := range d {
			got[k] = v
		}
	}
	if len(got) != len(demand) {
		t.Fatalf("decoded %d tenants, want %d", len(got), len(demand))
	}
	for k, v := range demand {
		if math.Abs(got[k]-v) > 1e-3 {
			t.Fatalf("%s: %v, want %v", k, got[k], v)
		}
	}
	for _, bad := range [][]byte{nil, []byte("AD"), []byte("AD\x01\x05ab"), append([]byte("AD\x01\x01e\x01\x00\x01"), 0xff)} {
		if _, _, _, _, _, err := decodeDemand(bad); err == nil {
			t.Fatalf("decoded garbage %q", bad)
		}
	}
}

// memNet is an in-memory gossip network for fleet tests.
type memNet struct {
	mu    sync.Mutex
	nodes map[string]*Fleet
}

type memMember struct {
	net  *memNet
	self string
}

func (m memMember) Members() []Member {
	m.net.mu.Lock()
	defer m.net.mu.Unlock()
	var out []Member
	for n := range m.net.nodes {
		out = append(out, Member{Name: n, Role: "edge"})
	}
	return out
}

func (m memMember) SendTo(name string, msg []byte) error {
	m.net.mu.Lock()
	f := m.net.nodes[name]
	m.net.mu.Unlock()
	if f == nil {
		return fmt.Errorf("no %s", name)
	}
	f.OnMessage(append([]byte(nil), msg...))
	return nil
}

// TestFleetSharesFollowDemand runs three edges on simulated time with skewed
// traffic (80/15/5) for a tenant limited to 600 requests per minute: the
// admitted total must be within 10% of the limit, where three naive local
// buckets would admit up to three times it.
func TestFleetSharesFollowDemand(t *testing.T) {
	clock := NewManualClock(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	const rpm = 600
	lim := Limit{RequestsPerMinute: rpm, Burst: 10}
	net := &memNet{nodes: map[string]*Fleet{}}
	type edge struct {
		f *Fleet
		b *Buckets
		c *tally.Meter
	}
	var edges []edge
	for i := range 3 {
		b, c := NewBuckets(BucketsConfig{Clock: clock}), tally.New()
		f := NewFleet(fmt.Sprintf("e%d", i), FleetConfig{Interval: 250 * time.Millisecond}, clock, c, b,
			func(string) float64 { return rpm / 60.0 })
		net.nodes[f.node] = f
		f.SetMembership(memMember{net: net, self: f.node})
		edges = append(edges, edge{f, b, c})
	}
	weights := []int{16, 3, 1} // 80%, 15%, 5% of 20 requests per 10 ms step
	admitted, offered := 0, 0
	const warm, measure = 10 * time.Second, 60 * time.Second
	step := 10 * time.Millisecond
	for el := time.Duration(0); el < warm+measure; el += step {
		for i, e := range edges {
			for range weights[i] {
				ok := e.b.Allow("acme", lim, 1).Allowed
				e.c.Record("acme", 1, ok)
				if el >= warm {
					offered++
					if ok {
						admitted++
					}
				}
			}
		}
		clock.Advance(step)
		if (el/step)%25 == 24 {
			for _, e := range edges {
				e.f.Tick()
			}
		}
	}
	want := rpm * measure.Minutes()
	ratio := float64(admitted) / want
	t.Logf("offered %d, admitted %d over %v, limit %.0f: %.1f%% of the limit", offered, admitted, measure, want, 100*ratio)
	if ratio < 0.9 || ratio > 1.1 {
		t.Fatalf("admitted %.1f%% of the fleet limit, want 90–110%%", 100*ratio)
	}
	for _, e := range edges {
		if st := e.f.Status(); st.Peers != 2 || st.ReportsRecvd == 0 {
			t.Fatalf("%s: %+v", e.f.node, st)
		}
	}
}

func TestFleetLoneEdgeGetsTheWholeBudget(t *testing.T) {
	clock := NewManualClock(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	b := NewBuckets(BucketsConfig{Clock: clock})
	c := tally.New()
	f := NewFleet("solo", FleetConfig{}, clock, c, b, func(string) float64 { return 10 })
	c.Record("acme", 5, true)
	clock.Advance(250 * time.Millisecond)
	f.Tick()
	if s, ok := b.Share("acme"); !ok || s != 1 {
		t.Fatalf("lone edge share %v %v", s, ok)
	}
}
