package threat

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/allsource/guard/fsm"
)

// Adaptive rate limiting (DESIGN.md §7). A tenant whose policy has adaptive
// bounds (min and max requests per minute) gets its limit moved within them,
// on the leader, from the usage the edges report:
//
//   - raised by Step when the admitted rate stays at or above HighUtil of the
//     limit for RaiseAfter and the system is healthy;
//   - lowered by Step toward the base (the figure the operator set) when the
//     admitted rate stays at or below LowUtil for DecayAfter;
//   - throttled to ThrottleFraction of the limit at once when the tenant's
//     demand reaches AnomalyFactor × its normal rate (its baseline), and
//     restored to the base when the burst is over;
//   - shrunk by ShedFactor when the servers or the edges are loaded (CPU at
//     or above HighCPU, or a queue at or above HighQueue), and recovered
//     toward the base when the load is gone.
//
// Utilisation counts admitted requests only: denied requests were not
// served. The baseline is an exponential mean of demand over BaselineWindow,
// learned only outside anomalies, and replicated with each change
// (RateLimit.ObservedRequestsPerMinute) so a new leader starts warm.

// UsageReport is what an edge sends, every few seconds, for the tenants it
// served during Interval: demand (requests asked for, in cost units) and how
// many were admitted.
type UsageReport struct {
	Edge     string                 `json:"edge"`
	Seq      uint64                 `json:"seq"`
	Interval time.Duration          `json:"interval_ns"`
	Tenants  map[string]TenantUsage `json:"tenants"`
	Load     Load                   `json:"load"`
}

// TenantUsage is one tenant's usage in a report's interval.
type TenantUsage struct {
	Demand   float64 `json:"demand"`
	Admitted float64 `json:"admitted"`
}

// Load is a process's load: CPU utilisation in [0, 1] and the depth of its
// work queue (edges: requests waiting; servers: entries committed but not
// yet applied).
type Load struct {
	CPU        float64 `json:"cpu"`
	QueueDepth int     `json:"queue_depth"`
}

// Validate checks a report's bounds.
func (r *UsageReport) Validate() error {
	if r.Edge == "" || len(r.Edge) > 128 {
		return errors.New("edge name is required (at most 128 bytes)")
	}
	if r.Interval < 100*time.Millisecond || r.Interval > 10*time.Minute {
		return errors.New("interval must be between 100ms and 10m")
	}
	if len(r.Tenants) > 100_000 {
		return errors.New("at most 100000 tenants per report")
	}
	for t, u := range r.Tenants {
		if err := fsm.ValidTenantID(t); err != nil {
			return err
		}
		if !finite(u.Demand) || !finite(u.Admitted) || u.Demand < 0 || u.Admitted < 0 || u.Admitted > u.Demand {
			return fmt.Errorf("tenant %s: demand and admitted must be finite, ≥ 0, admitted ≤ demand", t)
		}
	}
	if !finite(r.Load.CPU) || r.Load.CPU < 0 || r.Load.CPU > 1 || r.Load.QueueDepth < 0 {
		return errors.New("load cpu must be in [0, 1] and queue depth ≥ 0")
	}
	return nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// AdaptiveConfig tunes the limiter; zero fields take the defaults.
type AdaptiveConfig struct {
	Tick             time.Duration // decision period (default 30 s)
	HighUtil         float64       // default 0.8
	LowUtil          float64       // default 0.3
	RaiseAfter       time.Duration // default 5 min
	DecayAfter       time.Duration // default 15 min
	Step             float64       // relative change per decision (default 0.25)
	AnomalyFactor    float64       // default 3
	ThrottleFraction float64       // default 0.5
	ShedFactor       float64       // default 0.7
	HighCPU          float64       // default 0.85
	HighQueue        int           // default 1000
	BaselineWindow   time.Duration // default 1 h
	MinSamples       int           // baseline samples before anomaly throttling (default 10)
	ReportTTL        time.Duration // edge reports older than this are ignored (default 3 × Tick)
	MinInterval      time.Duration // between two non-urgent changes of one tenant (default 1 min)
}

func (c *AdaptiveConfig) fill() {
	d := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	fl := func(p *float64, v float64) {
		if *p == 0 {
			*p = v
		}
	}
	d(&c.Tick, 30*time.Second)
	fl(&c.HighUtil, 0.8)
	fl(&c.LowUtil, 0.3)
	d(&c.RaiseAfter, 5*time.Minute)
	d(&c.DecayAfter, 15*time.Minute)
	fl(&c.Step, 0.25)
	fl(&c.AnomalyFactor, 3)
	fl(&c.ThrottleFraction, 0.5)
	fl(&c.ShedFactor, 0.7)
	fl(&c.HighCPU, 0.85)
	if c.HighQueue == 0 {
		c.HighQueue = 1000
	}
	d(&c.BaselineWindow, time.Hour)
	if c.MinSamples == 0 {
		c.MinSamples = 10
	}
	d(&c.ReportTTL, 3*c.Tick)
	d(&c.MinInterval, time.Minute)
}

// Validate fills defaults and checks ranges.
func (c *AdaptiveConfig) Validate() error {
	c.fill()
	ok := c.Tick > 0 && c.LowUtil > 0 && c.LowUtil < c.HighUtil && c.HighUtil <= 1 && c.Step > 0 && c.Step < 1 &&
		c.AnomalyFactor > 1 && c.ThrottleFraction > 0 && c.ThrottleFraction < 1 && c.ShedFactor > 0 && c.ShedFactor < 1 &&
		c.HighCPU > 0 && c.HighCPU <= 1 && c.HighQueue > 0 && c.BaselineWindow >= c.Tick && c.MinSamples >= 1 &&
		c.ReportTTL >= c.Tick && c.RaiseAfter >= 0 && c.DecayAfter >= 0 && c.MinInterval >= 0
	if !ok {
		return errors.New("threat: adaptive limiter configuration out of range")
	}
	return nil
}

// Adaptive is the limiter's state on the leader: the latest report of each
// edge and each tenant's baseline and streaks. Report may be called from any
// goroutine; Decide from one.
type Adaptive struct {
	cfg AdaptiveConfig

	mu      sync.Mutex
	edges   map[string]edgeUsage
	tenants map[string]*tenantTrack
}

type edgeUsage struct {
	at      time.Time // server time of receipt
	seq     uint64
	rates   map[string]TenantUsage // per minute
	load    Load
	expired bool
}

type tenantTrack struct {
	baseline  float64 // demand per minute, normally
	samples   int
	highSince time.Time
	lowSince  time.Time
	lastMove  time.Time
	throttled bool
	// preThrottle is the limit before the anomaly throttle, restored after.
	preThrottle int
	shed        bool
	seen        time.Time
}

// NewAdaptive validates cfg and returns an empty limiter.
func NewAdaptive(cfg AdaptiveConfig) (*Adaptive, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Adaptive{cfg: cfg, edges: map[string]edgeUsage{}, tenants: map[string]*tenantTrack{}}, nil
}

// Config returns the configuration (defaults filled).
func (a *Adaptive) Config() AdaptiveConfig { return a.cfg }

// Report stores an edge's report, received at now. A report with a sequence
// number not above the edge's last one is ignored (a retry or a reorder).
func (a *Adaptive) Report(r UsageReport, now time.Time) error {
	if err := r.Validate(); err != nil {
		return err
	}
	perMin := 60 / r.Interval.Seconds()
	rates := make(map[string]TenantUsage, len(r.Tenants))
	for t, u := range r.Tenants {
		rates[t] = TenantUsage{Demand: u.Demand * perMin, Admitted: u.Admitted * perMin}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.edges[r.Edge]; ok && r.Seq != 0 && r.Seq <= old.seq && !old.expired {
		return nil
	}
	a.edges[r.Edge] = edgeUsage{at: now, seq: r.Seq, rates: rates, load: r.Load}
	for t := range rates {
		if _, ok := a.tenants[t]; !ok {
			a.tenants[t] = &tenantTrack{}
		}
	}
	return nil
}

// Track makes the limiter consider tenant even without reports (a new
// leader tracks every tenant whose limit is away from its base), starting
// its baseline from observed (0: unknown).
func (a *Adaptive) Track(tenant string, observed float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	tt, ok := a.tenants[tenant]
	if !ok {
		tt = &tenantTrack{}
		a.tenants[tenant] = tt
	}
	if observed > 0 && tt.samples == 0 {
		tt.baseline, tt.samples = observed, a.cfg.MinSamples
	}
}

// Forget drops every edge report and tenant track (leadership lost).
func (a *Adaptive) Forget() {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.edges)
	clear(a.tenants)
}

// usage sums the live edges' rates per tenant and takes the highest load.
func (a *Adaptive) usage(now time.Time) (map[string]TenantUsage, Load, int) {
	sum := map[string]TenantUsage{}
	var load Load
	live := 0
	for name, e := range a.edges {
		if now.Sub(e.at) > a.cfg.ReportTTL {
			e.expired = true
			a.edges[name] = e
			continue
		}
		live++
		for t, u := range e.rates {
			s := sum[t]
			s.Demand += u.Demand
			s.Admitted += u.Admitted
			sum[t] = s
		}
		load.CPU = math.Max(load.CPU, e.load.CPU)
		load.QueueDepth = max(load.QueueDepth, e.load.QueueDepth)
	}
	return sum, load, live
}

// Change is one decided limit change.
type Change struct {
	Cmd fsm.SetRateLimitCmd
	// From is the figure before the change.
	From int
}

// Decide runs one decision at now over the tenants it tracks. limit returns
// a tenant's current policy; server is the servers' own load. It returns the
// changes to propose (CmdSetRateLimit, with a Reason), in tenant order.
func (a *Adaptive) Decide(now time.Time, limit func(tenant string) (*fsm.RateLimit, bool), server Load) []Change {
	a.mu.Lock()
	defer a.mu.Unlock()
	usage, edgeLoad, liveEdges := a.usage(now)
	load := Load{CPU: math.Max(server.CPU, edgeLoad.CPU), QueueDepth: max(server.QueueDepth, edgeLoad.QueueDepth)}
	loaded := load.CPU >= a.cfg.HighCPU || load.QueueDepth >= a.cfg.HighQueue
	names := make([]string, 0, len(a.tenants))
	for t := range a.tenants {
		names = append(names, t)
	}
	sort.Strings(names)
	var out []Change
	for _, t := range names {
		tt := a.tenants[t]
		lim, ok := limit(t)
		if !ok || lim.MinRequestsPerMinute <= 0 || lim.MaxRequestsPerMinute <= 0 {
			delete(a.tenants, t) // deleted, or not adaptive
			continue
		}
		u, reported := usage[t]
		if !reported && liveEdges == 0 && !loaded {
			// No edge reports at all: nothing is known, change nothing
			// (an edge outage is not an idle tenant).
			continue
		}
		if c, ok := a.decide(now, t, tt, lim, u, load, loaded); ok {
			out = append(out, c)
		}
	}
	return out
}

func (a *Adaptive) decide(now time.Time, tenant string, tt *tenantTrack, lim *fsm.RateLimit, u TenantUsage, load Load, loaded bool) (Change, bool) {
	cfg := a.cfg
	cur := lim.RequestsPerMinute
	base := lim.BaseRequestsPerMinute
	if base <= 0 {
		base = cur
	}
	base = clampInt(base, lim.MinRequestsPerMinute, lim.MaxRequestsPerMinute)
	util := u.Admitted / float64(cur)

	anomalous := tt.samples >= cfg.MinSamples && tt.baseline > 0 && u.Demand >= cfg.AnomalyFactor*tt.baseline
	if !anomalous {
		// The baseline learns outside anomalies only: a running mean for the
		// first samples, then an exponential mean over BaselineWindow.
		tt.samples++
		alpha := math.Max(1/float64(tt.samples), cfg.Tick.Seconds()/cfg.BaselineWindow.Seconds())
		tt.baseline += alpha * (u.Demand - tt.baseline)
	}
	if util >= cfg.HighUtil {
		if tt.highSince.IsZero() {
			tt.highSince = now
		}
	} else {
		tt.highSince = time.Time{}
	}
	if util <= cfg.LowUtil {
		if tt.lowSince.IsZero() {
			tt.lowSince = now
		}
	} else {
		tt.lowSince = time.Time{}
	}

	target, reason, urgent := cur, "", false
	pct := func(v float64) string { return strconv.Itoa(int(math.Round(v*100))) + "%" }
	rpm := func(v float64) string { return strconv.Itoa(int(math.Round(v))) + " rpm" }
	switch {
	case anomalous:
		if !tt.throttled {
			tt.preThrottle = cur
			target = scale(cur, cfg.ThrottleFraction, math.Round)
			reason = "adaptive: anomaly throttle: demand " + rpm(u.Demand) + " is " +
				strconv.FormatFloat(u.Demand/tt.baseline, 'f', 1, 64) + "× the normal " + rpm(tt.baseline) +
				"; limit cut to " + pct(cfg.ThrottleFraction)
			tt.throttled, urgent = true, true
		}
	case loaded:
		target = scale(cur, cfg.ShedFactor, math.Round)
		reason = "adaptive: load shedding: cpu " + pct(load.CPU) + ", queue depth " + strconv.Itoa(load.QueueDepth)
		tt.shed, urgent = true, true
		tt.throttled = false
	case tt.throttled:
		target = max(cur, tt.preThrottle, base)
		reason = "adaptive: anomaly over: demand " + rpm(u.Demand) + " back under " +
			strconv.FormatFloat(cfg.AnomalyFactor, 'f', -1, 64) + "× the normal " + rpm(tt.baseline) + "; limit restored"
		tt.throttled, urgent = false, true
	case cur < base:
		// Back toward the base after load shedding (or a throttle whose end
		// a previous leader did not see), a step at a time.
		target = min(base, scale(cur, 1+cfg.Step, math.Ceil))
		reason = "adaptive: load normal (cpu " + pct(load.CPU) + "): raised toward the base " + strconv.Itoa(base) + " rpm"
		if target >= base {
			tt.shed = false
		}
	case !tt.highSince.IsZero() && now.Sub(tt.highSince) >= cfg.RaiseAfter:
		target = scale(cur, 1+cfg.Step, math.Ceil)
		reason = "adaptive: utilisation " + pct(util) + " for " + roundDur(now.Sub(tt.highSince)) +
			" with the system healthy: raised"
		tt.shed = false
	case !tt.lowSince.IsZero() && now.Sub(tt.lowSince) >= cfg.DecayAfter && cur > base:
		target = max(base, scale(cur, 1-cfg.Step, math.Floor))
		reason = "adaptive: utilisation " + pct(util) + " for " + roundDur(now.Sub(tt.lowSince)) +
			": lowered toward the base " + strconv.Itoa(base) + " rpm"
	}
	target = clampInt(target, lim.MinRequestsPerMinute, lim.MaxRequestsPerMinute)
	if target == cur || reason == "" {
		return Change{}, false
	}
	if !urgent && !tt.lastMove.IsZero() && now.Sub(tt.lastMove) < cfg.MinInterval {
		return Change{}, false
	}
	tt.lastMove = now
	// A move restarts the streaks: the next one is measured against the new limit.
	tt.highSince, tt.lowSince = time.Time{}, time.Time{}
	burst := lim.Burst
	if cur > 0 {
		burst = max(1, int(math.Round(float64(lim.Burst)*float64(target)/float64(cur))))
	}
	for _, c := range lim.RouteCosts {
		burst = max(burst, c) // every route stays affordable
	}
	return Change{From: cur, Cmd: fsm.SetRateLimitCmd{Tenant: tenant, RequestsPerMinute: target, Burst: burst,
		RouteCosts: lim.RouteCosts, MinRequestsPerMinute: lim.MinRequestsPerMinute, MaxRequestsPerMinute: lim.MaxRequestsPerMinute,
		BaseRequestsPerMinute: base, ObservedRequestsPerMinute: math.Round(tt.baseline*100) / 100,
		Reason: truncate(reason, 512)}}, true
}

// roundDur renders a streak's length: whole seconds, or milliseconds below 10 s.
func roundDur(d time.Duration) string {
	if d < 10*time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// scale multiplies v by f and rounds with round, ignoring float noise in the
// last bits (700 × 0.7 is 490, not 489).
func scale(v int, f float64, round func(float64) float64) int {
	x := float64(v) * f
	if r := math.Round(x); math.Abs(x-r) < 1e-6 {
		return int(r)
	}
	return int(round(x))
}

func clampInt(v, lo, hi int) int {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}
