package enforcement

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/allsource/guard/internal/tally"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestComputeShare(t *testing.T) {
	cfg := ShareConfig{}
	cases := []struct {
		name   string
		self   float64
		peers  []float64
		budget float64
		want   float64
	}{
		{"lone edge gets everything", 5, nil, 10, 1},
		{"lone edge, no demand", 0, nil, 10, 1},
		{"nobody asked: equal split", 0, []float64{0, 0, 0}, 10, 0.25},
		{"limit binds: proportional", 80, []float64{10, 10}, 50, 0.8},
		{"limit binds: small edge", 10, []float64{80, 10}, 50, 0.1},
		{"headroom: own demand plus an equal part of the spare", 2, []float64{4}, 10, (2 + 2) / 10.0},
		{"headroom, idle edge", 0, []float64{4, 2}, 10, (4.0 / 3) / 10},
		{"exactly at the limit", 5, []float64{5}, 10, 0.5},
		{"unknown budget: proportional", 1, []float64{3}, 0, 0.25},
		{"idle edge under load gets the floor", 0, []float64{100, 100, 100, 100}, 10, 0.02},
		{"tiny demand lifted to the floor", 0.1, []float64{100, 100, 100, 100}, 10, 0.02},
		{"large fleet: floor shrinks to FloorBudget/n", 0, make([]float64, 99), 0, 0.001},
		{"corrupt peer reports count as zero", 5, []float64{math.NaN(), -3, math.Inf(1)}, 100, (5 + 95.0/4) / 100},
	}
	for _, c := range cases {
		if c.name == "large fleet: floor shrinks to FloorBudget/n" {
			c.peers[0] = 1000 // someone has all the demand
		}
		got := ComputeShare(c.self, c.peers, c.budget, cfg)
		if !near(got, c.want, 1e-12) {
			t.Errorf("%s: ComputeShare(%v, %v, %v) = %v, want %v", c.name, c.self, c.peers, c.budget, got, c.want)
		}
	}
	if f := (ShareConfig{MinShare: 0.05, FloorBudget: 0.5}).Floor(4); f != 0.05 {
		t.Errorf("Floor = %v", f)
	}
	if f := (ShareConfig{MinShare: 0.05, FloorBudget: 0.5}).Floor(20); f != 0.025 {
		t.Errorf("Floor = %v", f)
	}
}

// TestSharesSumBound: with a consistent view, the fleet's shares sum to at
// least 1 (no budget left unused by construction) and at most 1 + FloorBudget,
// and each is within [floor, 1].
func TestSharesSumBound(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	cfg := ShareConfig{}
	for range 5000 {
		n := 1 + r.IntN(40)
		d := make([]float64, n)
		for i := range d {
			switch r.IntN(4) {
			case 0: // idle
			case 1:
				d[i] = r.Float64() * 0.01
			default:
				d[i] = r.ExpFloat64() * 10
			}
		}
		budget := 0.0
		if r.IntN(5) > 0 {
			budget = r.ExpFloat64() * 10 * float64(n)
		}
		sum := 0.0
		for i := range n {
			peers := append(append([]float64{}, d[:i]...), d[i+1:]...)
			s := ComputeShare(d[i], peers, budget, cfg)
			if s < cfg.Floor(n)-1e-15 || s > 1 {
				t.Fatalf("share %v outside [%v, 1] (n=%d, d=%v)", s, cfg.Floor(n), n, d)
			}
			sum += s
		}
		if sum < 1-1e-9 || sum > 1.1+1e-9 {
			t.Fatalf("shares sum to %v (n=%d, budget %v, d=%v)", sum, n, budget, d)
		}
	}
}

func TestFleetShares(t *testing.T) {
	self := map[string]float64{"a": 30}
	peers := []map[string]float64{{"a": 10, "b": 5}, {}}
	budget := func(tn string) float64 { return map[string]float64{"a": 20, "b": 100}[tn] }
	shares, def := FleetShares(self, peers, budget, ShareConfig{})
	if !near(def, 1.0/3, 1e-12) {
		t.Errorf("default share %v", def)
	}
	if !near(shares["a"], 0.75, 1e-12) { // binding: 30 / 40
		t.Errorf("share a = %v", shares["a"])
	}
	if !near(shares["b"], (0+95.0/3)/100, 1e-12) { // headroom, this edge idle for b
		t.Errorf("share b = %v", shares["b"])
	}
	if len(shares) != 2 {
		t.Errorf("shares %v", shares)
	}
}

func TestDemandMeter(t *testing.T) {
	c := NewManualClock(epoch)
	counts := tally.New()
	m := NewDemandMeter(counts, c, 5*time.Second)
	// 10 tokens/s for a second: the first tick takes the observed rate.
	for range 10 {
		counts.Record("acme", 1, true)
	}
	c.Advance(time.Second)
	if r := m.Tick()["acme"]; !near(r, 10, 1e-9) {
		t.Fatalf("first tick: %v", r)
	}
	// Rate doubles (costs count, not requests): the estimate moves toward 20
	// with weight 1 − e^(−1/5).
	for range 10 {
		counts.Record("acme", 2, true)
	}
	c.Advance(time.Second)
	want := 10 + (1-math.Exp(-0.2))*10
	if r := m.Tick()["acme"]; !near(r, want, 1e-9) {
		t.Fatalf("second tick: %v, want %v", r, want)
	}
	// Irregular ticks: one 5 s gap at 20/s equals five 1 s ticks.
	counts2, counts3 := tally.New(), tally.New()
	m2 := NewDemandMeter(counts2, c, 5*time.Second)
	m3 := NewDemandMeter(counts3, c, 5*time.Second)
	counts2.Record("x", 1, true)
	counts3.Record("x", 1, true)
	c.Advance(time.Second)
	m2.Tick()
	m3.Tick()
	for range 5 {
		for range 20 {
			counts2.Record("x", 1, true)
		}
		c.Advance(time.Second)
		m2.Tick()
	}
	for range 100 {
		counts3.Record("x", 1, true)
	}
	// m3 had no tick for 5 s; fold it once now.
	r3 := m3.Tick()["x"]
	r2 := m2.Tick()["x"] // immediately after: no fold, current rate
	if !near(r3, 1+(1-math.Exp(-1))*19, 1e-9) || !near(r2, r3, 1e-9) {
		t.Fatalf("irregular ticks: one 5 s tick %v, five 1 s ticks %v", r3, r2)
	}
	// Silence decays the rate by e^(−t/τ) and finally drops the tenant.
	before := m.Tick()["acme"]
	c.Advance(5 * time.Second)
	if r := m.Tick()["acme"]; !near(r, before*math.Exp(-1), 1e-9) {
		t.Fatalf("decay: %v, want %v", r, before*math.Exp(-1))
	}
	c.Advance(time.Minute)
	if rates := m.Tick(); len(rates) != 0 {
		t.Fatalf("idle tenant not dropped: %v", rates)
	}
}

func TestPeerTable(t *testing.T) {
	c := NewManualClock(epoch)
	pt := NewPeerTable(c, 3*time.Second)
	if !pt.Observe("e2", 5, map[string]float64{"a": 1}) {
		t.Fatal("first report rejected")
	}
	if pt.Observe("e2", 4, map[string]float64{"a": 99}) || pt.Observe("e2", 5, map[string]float64{"a": 99}) {
		t.Fatal("old or repeated report accepted")
	}
	pt.Observe("e1", 1, map[string]float64{"a": 2})
	live := pt.Live()
	if len(live) != 2 || live[0]["a"] != 2 || live[1]["a"] != 1 {
		t.Fatalf("Live = %v, want e1 then e2", live)
	}
	c.Advance(2 * time.Second)
	pt.Observe("e1", 2, map[string]float64{"a": 3})
	c.Advance(2 * time.Second) // e2 silent for 4 s: stale
	if live := pt.Live(); len(live) != 1 || live[0]["a"] != 3 {
		t.Fatalf("stale peer kept: %v", live)
	}
	pt.Forget("e1")
	if live := pt.Live(); len(live) != 0 {
		t.Fatalf("Forget: %v", live)
	}
}

// ---- the fleet simulation ----

type simEdge struct {
	name     string
	buckets  *Buckets
	counts   *tally.Meter
	meter    *DemandMeter
	peers    *PeerTable
	seq      uint64
	admitted int
	arrived  int
}

type simResult struct {
	arrived, admitted int
	perEdge           []int
	seconds           float64
}

// simulate runs n edges against one tenant with limit lim for the given
// simulated time. weights(t) gives each edge's fraction of arrivals at time
// t; arrivals are Poisson with total rate arrivalsPerSec. With fleet false
// every edge keeps a plain local bucket (the naive setup). Gossip runs every
// second; an edge computes its share from its fresh demand and the reports
// peers sent at the previous round.
func simulate(t *testing.T, n int, lim Limit, arrivalsPerSec float64, d time.Duration,
	weights func(at time.Duration) []float64, fleet bool, seed uint64) simResult {
	t.Helper()
	clock := NewManualClock(epoch)
	rng := rand.New(rand.NewPCG(seed, 99))
	edges := make([]*simEdge, n)
	for i := range edges {
		e := &simEdge{name: fmt.Sprintf("edge-%d", i)}
		e.buckets = NewBuckets(BucketsConfig{Clock: clock})
		e.counts = tally.New()
		e.meter = NewDemandMeter(e.counts, clock, 5*time.Second)
		e.peers = NewPeerTable(clock, 3*time.Second)
		if fleet {
			// Membership is known before any demand: split evenly.
			if err := e.buckets.SetDefaultShare(1 / float64(n)); err != nil {
				t.Fatal(err)
			}
		}
		edges[i] = e
	}
	budget := func(string) float64 { return float64(lim.RequestsPerMinute) / 60 }
	const tenant = "acme"
	type report struct {
		from   string
		seq    uint64
		demand map[string]float64
	}
	var inFlight []report
	gossip := func() {
		// Deliver last round's reports, then each edge measures, recomputes
		// its share and publishes for the next round.
		for _, r := range inFlight {
			for _, e := range edges {
				if e.name != r.from {
					e.peers.Observe(r.from, r.seq, r.demand)
				}
			}
		}
		inFlight = inFlight[:0]
		for _, e := range edges {
			rates := e.meter.Tick()
			shares, def := FleetShares(rates, e.peers.Live(), budget, ShareConfig{})
			for tn, s := range shares {
				if err := e.buckets.SetShare(tn, s); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.buckets.SetDefaultShare(def); err != nil {
				t.Fatal(err)
			}
			e.seq++
			inFlight = append(inFlight, report{e.name, e.seq, rates})
		}
	}
	var now time.Duration
	nextGossip := time.Second
	for {
		gap := time.Duration(rng.ExpFloat64() / arrivalsPerSec * float64(time.Second))
		for fleet && now+gap >= nextGossip && nextGossip <= d {
			clock.Advance(nextGossip - now)
			gap -= nextGossip - now
			now = nextGossip
			gossip()
			nextGossip += time.Second
		}
		if now+gap > d {
			break
		}
		clock.Advance(gap)
		now += gap
		w := weights(now)
		x, i := rng.Float64(), 0
		for i < n-1 && x >= w[i] {
			x -= w[i]
			i++
		}
		e := edges[i]
		e.arrived++
		ok := e.buckets.Allow(tenant, lim, 1).Allowed
		if fleet {
			e.counts.Record(tenant, 1, ok)
		}
		if ok {
			e.admitted++
		}
	}
	res := simResult{seconds: d.Seconds()}
	for _, e := range edges {
		res.arrived += e.arrived
		res.admitted += e.admitted
		res.perEdge = append(res.perEdge, e.admitted)
	}
	return res
}

func skewed(at time.Duration) []float64 { return []float64{0.8, 0.05, 0.05, 0.05, 0.05} }

// TestFleetShareSimulation is DESIGN §5's goal: 5 edges, one receiving 80% of
// the arrivals, total demand 25× the tenant's limit so that every edge alone
// would exceed it. The fleet must admit the limit ±10%; naive local buckets
// admit about 5×.
func TestFleetShareSimulation(t *testing.T) {
	lim := Limit{RequestsPerMinute: 1200, Burst: 40} // 20 req/s
	const d = 300 * time.Second
	want := 20.0 * d.Seconds()
	fleet := simulate(t, 5, lim, 25*20, d, skewed, true, 1)
	naive := simulate(t, 5, lim, 25*20, d, skewed, false, 1)
	ratio := float64(fleet.admitted) / want
	naiveRatio := float64(naive.admitted) / want
	t.Logf("limit %d req over %v; arrivals %d; fleet-share admitted %d (%.3f× the limit, per edge %v); naive local buckets admitted %d (%.2f×)",
		int(want), d, fleet.arrived, fleet.admitted, ratio, fleet.perEdge, naive.admitted, naiveRatio)
	if ratio < 0.9 || ratio > 1.1 {
		t.Errorf("fleet admitted %.3f× the limit, want within ±10%%", ratio)
	}
	if naiveRatio < 4.5 {
		t.Errorf("naive buckets admitted only %.2f×: the scenario does not show the problem", naiveRatio)
	}
	// Proportional: the hot edge gets about 80% of the admissions.
	if hot := float64(fleet.perEdge[0]) / float64(fleet.admitted); hot < 0.7 || hot > 0.9 {
		t.Errorf("hot edge got %.2f of the admissions, want about 0.8", hot)
	}
}

// TestFleetShareShiftingTraffic moves the hot spot from edge 0 to edge 3
// halfway through and leaves two edges idle.
func TestFleetShareShiftingTraffic(t *testing.T) {
	lim := Limit{RequestsPerMinute: 600, Burst: 20} // 10 req/s
	const d = 300 * time.Second
	w := func(at time.Duration) []float64 {
		if at < d/2 {
			return []float64{0.9, 0.1, 0, 0, 0}
		}
		return []float64{0.05, 0.05, 0, 0.9, 0}
	}
	res := simulate(t, 5, lim, 5*10, d, w, true, 2)
	ratio := float64(res.admitted) / (10 * d.Seconds())
	t.Logf("shifting traffic: admitted %.3f× the limit, per edge %v", ratio, res.perEdge)
	if ratio < 0.9 || ratio > 1.1 {
		t.Errorf("admitted %.3f× the limit, want within ±10%%", ratio)
	}
	if res.perEdge[3] < res.admitted/3 {
		t.Errorf("the new hot edge did not take over the budget: %v", res.perEdge)
	}
}

// TestFleetShareUnderLimit: when the fleet's demand is half the limit, shares
// must not turn into denials (valid requests keep succeeding).
func TestFleetShareUnderLimit(t *testing.T) {
	lim := Limit{RequestsPerMinute: 1200, Burst: 40} // 20 req/s
	res := simulate(t, 5, lim, 10, 300*time.Second, skewed, true, 3)
	frac := float64(res.admitted) / float64(res.arrived)
	t.Logf("under the limit: %d of %d admitted (%.4f)", res.admitted, res.arrived, frac)
	if frac < 0.995 {
		t.Errorf("only %.4f of requests admitted at half the limit", frac)
	}
}

// TestFleetShareLoneEdge: one edge gets the whole budget.
func TestFleetShareLoneEdge(t *testing.T) {
	lim := Limit{RequestsPerMinute: 600, Burst: 20}
	res := simulate(t, 1, lim, 50, 120*time.Second, func(time.Duration) []float64 { return []float64{1} }, true, 4)
	ratio := float64(res.admitted) / (10 * 120)
	if ratio < 0.98 || ratio > 1.05 {
		t.Errorf("lone edge admitted %.3f× the limit", ratio)
	}
}

// TestFleetShareOverloadLevels: the ±10% holds from just over the limit
// (where Poisson noise on small per-edge buckets costs a few percent) to 50×.
func TestFleetShareOverloadLevels(t *testing.T) {
	lim := Limit{RequestsPerMinute: 1200, Burst: 40}
	const d = 300 * time.Second
	for _, x := range []float64{1.2, 2, 5, 50} {
		res := simulate(t, 5, lim, x*20, d, skewed, true, 7)
		ratio := float64(res.admitted) / (20 * d.Seconds())
		t.Logf("demand %.1f× the limit: admitted %.3f× the limit", x, ratio)
		if ratio < 0.9 || ratio > 1.1 {
			t.Errorf("demand %.1f×: admitted %.3f× the limit, want within ±10%%", x, ratio)
		}
	}
}
