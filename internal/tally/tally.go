// Package tally counts, per tenant, the request cost an edge was asked for
// and the cost it admitted, once per request, for any number of readers.
//
// An edge has two readers of the same numbers: fleet limiting
// (enforcement.DemandMeter: requested cost, folded into a rate every gossip
// interval) and usage reporting (threat.UsageMeter: requested and admitted
// cost, sent to the servers' adaptive limiter every report interval). The
// pipeline records each request once into a Meter; each reader keeps the
// totals it saw last and takes the difference, so readers on different
// intervals never reset each other's counts.
//
// Record is the hot path and takes no lock: once a tenant has a cell it is a
// sync.Map load and one or two atomic adds.
package tally

import (
	"sync"
	"sync/atomic"
)

// Meter holds, per tenant, running totals of requested and admitted cost.
type Meter struct {
	cells sync.Map // tenant → *cell
}

// cell's totals only grow (2^64 cost units do not run out).
type cell struct {
	demand, admitted atomic.Uint64
}

// New returns an empty meter.
func New() *Meter { return &Meter{} }

// Record notes one request for tenant costing cost tokens (below 1 counts as
// 1), admitted or not. It never blocks.
func (m *Meter) Record(tenant string, cost int, admitted bool) {
	if cost < 1 {
		cost = 1
	}
	v, ok := m.cells.Load(tenant)
	if !ok {
		v, _ = m.cells.LoadOrStore(tenant, new(cell))
	}
	c := v.(*cell)
	// demand before admitted: a reader that loads admitted first never sees
	// more admitted than demanded.
	c.demand.Add(uint64(cost))
	if admitted {
		c.admitted.Add(uint64(cost))
	}
}

// Retain forgets every tenant for which keep returns false (say, tenants
// gone from the edge's view), so the meter holds at most one cell per live
// tenant. A Record racing with the drop of its tenant may be lost or may
// re-create the cell until the next Retain.
func (m *Meter) Retain(keep func(tenant string) bool) {
	m.cells.Range(func(k, v any) bool {
		if !keep(k.(string)) {
			m.cells.CompareAndDelete(k, v)
		}
		return true
	})
}

// Counts is what a reader takes for one tenant: cost requested and admitted
// since its previous Take (Admitted ≤ Demand).
type Counts struct {
	Demand, Admitted uint64
}

// Reader takes the counts recorded since its previous Take. One goroutine
// at a time may use a Reader; any number of readers may share a Meter.
type Reader struct {
	m    *Meter
	gen  uint64
	seen map[string]seen
}

type seen struct {
	c                *cell
	demand, admitted uint64
	gen              uint64
}

// NewReader returns a reader whose first Take counts everything recorded
// so far.
func (m *Meter) NewReader() *Reader { return &Reader{m: m, seen: map[string]seen{}} }

// Take returns, for every tenant with requests since the previous Take, the
// cost requested and admitted since then.
func (r *Reader) Take() map[string]Counts {
	r.gen++
	out := map[string]Counts{}
	r.m.cells.Range(func(k, v any) bool {
		t, c := k.(string), v.(*cell)
		a := c.admitted.Load()
		d := c.demand.Load()
		s := r.seen[t]
		if s.c != c { // a new cell (or a tenant dropped and back): all of it is new
			s = seen{c: c}
		}
		// An admission whose demand came before the previous Take can be
		// seen here with no new demand; it is not dropped but carried to
		// the Take that reports demand again, keeping Admitted ≤ Demand.
		da := min(a-s.admitted, d-s.demand)
		if d > s.demand {
			out[t] = Counts{Demand: d - s.demand, Admitted: da}
		}
		r.seen[t] = seen{c: c, demand: d, admitted: s.admitted + da, gen: r.gen}
		return true
	})
	for t, s := range r.seen {
		if s.gen != r.gen {
			delete(r.seen, t)
		}
	}
	return out
}
