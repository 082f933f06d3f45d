package enforcement

import (
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/allsource/guard/internal/tally"
)

// Fleet-wide rate limits (DESIGN §5): a tenant's limit is for the whole fleet,
// so each edge's bucket for the tenant runs at a share of it. Edges measure
// the demand they see per tenant (DemandMeter), gossip it, keep the latest
// report of every live peer (PeerTable), and compute their own share from
// their fresh demand and the peers' reported demands (ComputeShare /
// FleetShares), then apply it with Buckets.SetShare.
//
// The share of edge i for a tenant with budget R tokens/s, demands d_j over
// the n live edges (D = Σ d_j), and floor f:
//
//	D ≥ R (the limit binds):  s_i = d_i / D                   — proportional
//	D < R (headroom):         s_i = (d_i + (R − D)/n) / R     — own demand plus an equal part of the spare
//	D = 0 (nobody asked):     s_i = 1/n
//	then                      s_i = min(1, max(s_i, f)),  f = min(MinShare, FloorBudget/n)
//
// Why each part:
//   - Proportional to *requested* demand, not admitted: admitted traffic is
//     capped by the share itself, so measuring it would freeze shares where
//     they started.
//   - Under the limit, a purely proportional split caps an edge at its recent
//     demand × R/D, so a burst on one edge is denied although the fleet has
//     room; giving every edge its demand plus an equal part of the spare keeps
//     valid requests succeeding and still sums to exactly 1.
//   - The floor f lets an edge with no recent demand admit its first requests
//     (its bucket holds at least one token) instead of denying all of them
//     until the next gossip round. It is the only way the shares can add up to
//     more than 1, and by at most FloorBudget (each of at most n edges lifted
//     by at most f ≤ FloorBudget/n). It rarely costs that much: an edge lifted
//     to the floor has demand below it, so it uses little of it.
//   - A lone edge (no live peer) gets 1: the whole budget.
//   - Stale peers are dropped by PeerTable (no report within StaleAfter, timed
//     by the receiver's clock, so clock skew between edges does not matter):
//     a dead edge's last demand must not keep part of the budget reserved.
//
// Beyond a few hundred edges, full-mesh gossip stops scaling; DESIGN §11 plans
// for servers to compute the same shares and push them down the watch stream.
// ComputeShare is pure so that either side can run it.

// ShareConfig tunes the floor. The zero value means the defaults.
type ShareConfig struct {
	// MinShare is the floor for one edge's share; default 0.02.
	MinShare float64
	// FloorBudget bounds the floors' total, so a large fleet cannot exceed the
	// limit by n × MinShare: the floor is min(MinShare, FloorBudget/n).
	// Default 0.1, so the shares sum to at most 1.1.
	FloorBudget float64
}

func (c ShareConfig) withDefaults() ShareConfig {
	if !(c.MinShare > 0) {
		c.MinShare = 0.02
	}
	if !(c.FloorBudget > 0) {
		c.FloorBudget = 0.1
	}
	return c
}

// Floor returns the floor share with n live edges (this one included).
func (c ShareConfig) Floor(n int) float64 {
	c = c.withDefaults()
	return min(c.MinShare, c.FloorBudget/float64(max(n, 1)))
}

// ComputeShare returns this edge's share of a tenant's budget, given its own
// demand, the demands reported by the live peers (one entry per live peer,
// 0 if it reported none for the tenant), and the budget in tokens per second
// (RequestsPerMinute/60; ≤ 0 when unknown, which makes the split purely
// proportional). Demands are tokens per second; negative, NaN or infinite ones
// (corrupt reports) count as 0. The result is in (0, 1].
func ComputeShare(self float64, peers []float64, budget float64, cfg ShareConfig) float64 {
	n := 1 + len(peers)
	if n == 1 {
		return 1
	}
	self = cleanDemand(self)
	total := self
	for _, d := range peers {
		total += cleanDemand(d)
	}
	var s float64
	switch {
	case budget > 0 && total < budget:
		s = (self + (budget-total)/float64(n)) / budget
	case total > 0:
		s = self / total
	default:
		s = 1 / float64(n)
	}
	return min(1, max(s, cfg.Floor(n)))
}

// cleanDemand treats a negative, NaN or infinite demand (a corrupt report)
// as none.
func cleanDemand(d float64) float64 {
	if d > 0 && !math.IsInf(d, 1) {
		return d
	}
	return 0
}

// FleetShares computes this edge's share for every tenant that this edge or
// a live peer has demand for. budget returns a tenant's budget in tokens per
// second (≤ 0 if unknown). defaultShare, 1/n for n live edges, is the share
// for tenants nobody has asked for yet: pass it to Buckets.SetDefaultShare,
// so a tenant that suddenly appears on every edge gets at most its budget.
func FleetShares(self map[string]float64, peers []map[string]float64, budget func(tenant string) float64,
	cfg ShareConfig) (shares map[string]float64, defaultShare float64) {
	shares = make(map[string]float64, len(self))
	others := make([]float64, len(peers))
	one := func(t string) {
		if _, done := shares[t]; done {
			return
		}
		for i, p := range peers {
			others[i] = p[t]
		}
		shares[t] = ComputeShare(self[t], others, budget(t), cfg)
	}
	for t := range self {
		one(t)
	}
	for _, p := range peers {
		for t := range p {
			one(t)
		}
	}
	return shares, 1 / float64(1+len(peers))
}

// DemandMeter measures, per tenant, the exponentially weighted rate of
// requested cost (tokens per second) — every request's cost, admitted or not.
//
// It reads the edge's tally.Meter, the one the pipeline records each request
// into (the usage reporter reads the same one), so the hot path costs one
// lock-free recording for both. Tick, run once per gossip interval, folds
// what was recorded since the last tick into each tenant's rate with weight
// 1 − e^(−Δt/τ), so the estimate forgets with time constant τ whatever the
// tick spacing. A tenant's first tick takes its observed rate as is (no ramp
// from zero); tenants whose rate decays below 0.001 tokens/s are dropped
// until they ask again.
type DemandMeter struct {
	clock Clock
	tau   float64 // seconds

	mu     sync.Mutex // Tick
	reader *tally.Reader
	rates  map[string]float64
	last   time.Time
}

// NewDemandMeter returns a meter reading counts, with time constant tau
// (default 5 s).
func NewDemandMeter(counts *tally.Meter, clock Clock, tau time.Duration) *DemandMeter {
	if clock == nil {
		clock = SystemClock
	}
	if tau <= 0 {
		tau = 5 * time.Second
	}
	return &DemandMeter{clock: clock, tau: tau.Seconds(), reader: counts.NewReader(), rates: map[string]float64{}, last: clock.Now()}
}

// Tick folds the demand recorded since the last tick into the rates and
// returns them (tenant → tokens per second). A tick less than a millisecond
// after the previous one only returns the current rates.
func (m *DemandMeter) Tick() map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.clock.Now()
	if dt := now.Sub(m.last).Seconds(); dt >= 1e-3 {
		m.last = now
		alpha := 1 - math.Exp(-dt/m.tau)
		got := m.reader.Take()
		for t, r := range m.rates { // known tenants move toward what they asked for
			r += alpha * (float64(got[t].Demand)/dt - r)
			delete(got, t)
			if r < 1e-3 {
				delete(m.rates, t)
			} else {
				m.rates[t] = r
			}
		}
		for t, c := range got { // new ones start at it
			if inst := float64(c.Demand) / dt; inst >= 1e-3 {
				m.rates[t] = inst
			}
		}
	}
	return maps.Clone(m.rates)
}

// PeerTable keeps the latest demand report of each peer edge.
type PeerTable struct {
	clock      Clock
	staleAfter time.Duration

	mu    sync.Mutex
	peers map[string]*peerReport
}

type peerReport struct {
	seq    uint64
	seen   time.Time
	demand map[string]float64
}

// NewPeerTable returns an empty table; reports not refreshed within
// staleAfter (default 5 s) are dropped.
func NewPeerTable(clock Clock, staleAfter time.Duration) *PeerTable {
	if clock == nil {
		clock = SystemClock
	}
	if staleAfter <= 0 {
		staleAfter = 5 * time.Second
	}
	return &PeerTable{clock: clock, staleAfter: staleAfter, peers: make(map[string]*peerReport)}
}

// Observe records node's report number seq (tenant → tokens/s). Gossip can
// reorder or repeat messages: a report not newer than the one held is
// ignored, and Observe returns false. The table keeps demand as given; the
// caller must not modify it afterwards.
func (t *PeerTable) Observe(node string, seq uint64, demand map[string]float64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[node]; ok && seq <= p.seq {
		return false
	}
	t.peers[node] = &peerReport{seq: seq, seen: t.clock.Now(), demand: demand}
	return true
}

// Forget drops node (it left the membership).
func (t *PeerTable) Forget(node string) {
	t.mu.Lock()
	delete(t.peers, node)
	t.mu.Unlock()
}

// Live drops stale peers and returns the demand maps of the others, ordered
// by node name (so results are reproducible to the last bit).
func (t *PeerTable) Live() []map[string]float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	names := make([]string, 0, len(t.peers))
	for n, p := range t.peers {
		if now.Sub(p.seen) > t.staleAfter {
			delete(t.peers, n)
			continue
		}
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]map[string]float64, len(names))
	for i, n := range names {
		out[i] = t.peers[n].demand
	}
	return out
}
