//go:build linux

package faults

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// workload says how hard the clients push.
type workload struct {
	workers int           // concurrent clients, each issuing one operation at a time
	tenants int           // tenants they share (one linearizability partition each)
	objects int           // tenants whose API keys and IP rules they create, revoke, remove and list (0: none)
	think   time.Duration // pause between a client's operations
	timeout time.Duration // per request; a write that times out is ambiguous
	probe   time.Duration // availability prober's write interval (0: off)
}

// scenario is a nemesis applied in cycles under load.
type scenario struct {
	name    string
	nemesis nemesis
	cycles  int
	warmup  time.Duration
	fault   time.Duration // how long each fault lasts (a deliberate sleep)
	heal    time.Duration // how long the cluster runs healed between faults
	load    workload
}

// run is one scenario in progress.
type run struct {
	t      *testing.T
	c      *cluster
	sc     scenario
	hist   *history
	rnd    *mrand.Rand
	prefix string // tenant and request-id prefix
	values atomic.Int64

	mu      sync.Mutex
	faulted map[string]bool
	faults  []*fault
	events  []string // the nemesis's timeline, for failure reports
	mon     *leaderMonitor
	edges   edgeChecker

	objMu   sync.Mutex
	keys    map[string][]string // object tenant → API key ids created (acknowledged)
	rules   map[string][]string // object tenant → IP rule ids present (acknowledged)
	removed map[string][]string // object tenant → IP rule ids removed
	created map[string]int      // object tenant → IP rules created
}

// objTenantName is the i-th tenant of API keys and IP rules.
func (r *run) objTenantName(i int) string { return fmt.Sprintf("%s-o%d", r.prefix, i) }

func (r *run) objectTenant(t string) bool { return strings.HasPrefix(t, r.prefix+"-o") }

// Bounds per object tenant, so that list reads (split into one observation
// per object for the checker) stay small.
const (
	maxKeysPerTenant  = 20
	maxRulesPresent   = 20
	maxRulesPerTenant = 60
)

var objectWeights = []struct {
	kind opKind
	w    int
}{{opCreateKey, 20}, {opRevokeKey, 15}, {opListKeys, 20}, {opAddRule, 15}, {opRemoveRule, 12}, {opListRules, 18}}

// objectOp issues one operation on an API key or IP rule and keeps the pools
// of ids up to date.
func (r *run) objectOp(a *apiClient, rnd *mrand.Rand, n *node) op {
	t := r.objTenantName(rnd.IntN(r.sc.load.objects))
	x := rnd.IntN(100)
	kind := opListKeys
	for _, w := range objectWeights {
		if x < w.w {
			kind = w.kind
			break
		}
		x -= w.w
	}
	r.objMu.Lock()
	id := ""
	switch {
	case kind == opCreateKey && len(r.keys[t]) >= maxKeysPerTenant:
		kind = opRevokeKey
	case kind == opAddRule && (len(r.rules[t]) >= maxRulesPresent || r.created[t] >= maxRulesPerTenant):
		kind = opRemoveRule
	}
	switch kind {
	case opRevokeKey:
		if ks := r.keys[t]; len(ks) > 0 {
			id = ks[rnd.IntN(len(ks))]
		} else {
			kind = opCreateKey
		}
	case opRemoveRule:
		if rs, gone := r.rules[t], r.removed[t]; len(rs) > 0 && (len(gone) == 0 || rnd.IntN(10) > 0) {
			id = rs[rnd.IntN(len(rs))]
		} else if len(gone) > 0 {
			id = gone[rnd.IntN(len(gone))] // removing twice: not_found
		} else {
			kind = opAddRule
		}
	}
	if kind == opAddRule {
		r.created[t]++
	}
	r.objMu.Unlock()
	o := a.doObject(n, kind, t, r.nextValue(), id)
	if o.Out == outOK {
		r.objMu.Lock()
		switch kind {
		case opCreateKey:
			r.keys[t] = append(r.keys[t], o.Object)
		case opAddRule:
			r.rules[t] = append(r.rules[t], o.Object)
		case opRemoveRule:
			if i := slices.Index(r.rules[t], id); i >= 0 {
				r.rules[t] = slices.Delete(r.rules[t], i, i+1)
				r.removed[t] = append(r.removed[t], id)
			}
		}
		r.objMu.Unlock()
	}
	return o
}

func (r *run) setFaulted(id string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faulted[id] = on
}

func (r *run) healthyNodes() []*node {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*node
	for _, n := range r.c.nodes {
		if !r.faulted[n.id] {
			out = append(out, n)
		}
	}
	return out
}

func (r *run) tenant(i int) string { return fmt.Sprintf("%s-t%d", r.prefix, i) }
func (r *run) probeTenant() string { return r.prefix + "-probe" }

// nextValue is a rate limit no other write of the run uses, so a read names
// the write it saw.
func (r *run) nextValue() int { return int(r.values.Add(1)) }

var weights = []struct {
	kind opKind
	w    int
}{{opSetRPM, 30}, {opReadRPM, 25}, {opReadStatus, 10}, {opStaleRead, 12}, {opSuspend, 6}, {opActivate, 6},
	{opCreate, 7}, {opDelete, 4}}

func (r *run) randomKind(rnd *mrand.Rand) opKind {
	total := 0
	for _, w := range weights {
		total += w.w
	}
	x := rnd.IntN(total)
	for _, w := range weights {
		if x < w.w {
			return w.kind
		}
		x -= w.w
	}
	return opReadRPM
}

// runScenario starts the clients, applies the nemesis in cycles, heals,
// checks everything and returns the scenario's row of the report.
func runScenario(t *testing.T, c *cluster, sc scenario) *result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	r := &run{t: t, c: c, sc: sc, hist: newHistory(), rnd: mrand.New(mrand.NewPCG(seed, 1)), faulted: map[string]bool{},
		prefix: shortName(sc.name) + "-" + strings.ToLower(randomToken(3)), keys: map[string][]string{},
		rules: map[string][]string{}, removed: map[string][]string{}, created: map[string]int{}}
	r.values.Store(1000)
	t.Logf("scenario %q: nemesis %s, %d cycle(s) of %v fault + %v healed, %d clients on %d tenants (seed %d)",
		sc.name, sc.nemesis.name(), sc.cycles, sc.fault, sc.heal, sc.load.workers, sc.load.tenants, seed)

	// Make sure we start from a healthy cluster, and create the tenants
	// (recorded: the model starts from "absent").
	if err := c.waitHealthy(ctx); err != nil {
		t.Fatalf("cluster not healthy before %q: %v", sc.name, err)
	}
	setup := newAPIClient(sc.load.workers+1, c.token, r.prefix+"-setup", r.hist, 10*time.Second)
	defer setup.close()
	for i := 0; i < sc.load.tenants; i++ {
		r.mustDo(ctx, setup, opCreate, r.tenant(i), 0)
	}
	for i := 0; i < sc.load.objects; i++ {
		r.mustDo(ctx, setup, opCreate, r.objTenantName(i), 0)
	}
	if sc.load.probe > 0 {
		r.mustDo(ctx, setup, opCreate, r.probeTenant(), 0)
	}
	r.edges = newEdgeChecker(t, c, r)

	r.mon = startLeaderMonitor(c)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < sc.load.workers; w++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.worker(w, seed, stop) }()
	}
	if sc.load.probe > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); r.prober(stop) }()
	}
	if r.edges != nil {
		r.edges.start(stop)
	}

	loadStart := loadAverage()
	sleepCtx(ctx, sc.warmup)
	for i := 0; i < sc.cycles && ctx.Err() == nil; i++ {
		f, heal, err := sc.nemesis.inject(ctx, r)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("%s: inject: %v", sc.name, err)
		}
		if f != nil {
			r.event(fmt.Sprintf("%s on %s at %s, in place %s", f.kind, strings.Join(f.victims, ","), offset(f.at), offset(f.inPlace)))
		}
		sleepCtx(ctx, sc.fault) // the fault's duration: a deliberate sleep
		if f != nil {
			f.healed = r.hist.now()
			f.recoverFrom, f.invokedAfter = f.at, f.inPlace
			if f.fromHeal {
				f.recoverFrom, f.invokedAfter = f.healed, f.healed
			}
			r.faults = append(r.faults, f)
		}
		if err := heal(ctx); err != nil {
			t.Errorf("%s: heal: %v", sc.name, err)
		}
		if f != nil {
			r.event("healed at " + offset(r.hist.now()))
		}
		sleepCtx(ctx, sc.heal)
	}
	loadEnd := loadAverage()
	close(stop)
	wg.Wait()
	if r.edges != nil {
		r.edges.stop()
	}
	r.mon.stop()

	// Every fault is healed: the cluster must come back whole.
	if err := c.healAllNetworks(ctx); err != nil {
		t.Errorf("%s: final network heal: %v", sc.name, err)
	}
	if err := c.waitHealthy(ctx); err != nil {
		c.dumpLogs()
		t.Fatalf("%s: cluster did not recover after the faults healed: %v", sc.name, err)
	}
	r.finalReads(ctx, setup)
	res := r.check(ctx)
	res.Load = loadStart + " → " + loadEnd
	return res
}

// loadAverage is the machine's 1-minute load average ("?" if unknown): the
// figures depend on how busy the shared 2-core machine was.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// event adds a line to the nemesis's timeline.
func (r *run) event(e string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// timeline is the nemesis's timeline so far, one line.
func (r *run) timeline() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return "no fault injected yet"
	}
	return strings.Join(r.events, "; ")
}

// offset formats a history time (ns since the scenario's start).
func offset(ns int64) string { return fmt.Sprintf("+%.3fs", time.Duration(ns).Seconds()) }

func shortName(s string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(s) {
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			b.WriteRune(c)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-")
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// mustDo retries an operation until it has a definite answer; setup and final
// reads use it. Every attempt is recorded.
func (r *run) mustDo(ctx context.Context, a *apiClient, kind opKind, tenant string, value int) op {
	var o op
	err := poll(ctx, 60*time.Second, 100*time.Millisecond, func() (bool, error) {
		l, err := r.c.leader(ctx)
		if err != nil {
			return false, err
		}
		o = a.do(l, kind, tenant, value)
		r.hist.add(o)
		if o.Out == outOK || o.Out == outFail {
			return true, nil
		}
		return false, fmt.Errorf("%v", o)
	})
	if err != nil {
		r.c.dumpLogs()
		r.t.Fatalf("%s %s never got a definite answer: %v", kind, tenant, err)
	}
	return o
}

func (r *run) worker(id int, seed uint64, stop <-chan struct{}) {
	rnd := mrand.New(mrand.NewPCG(seed, uint64(id)+100))
	a := newAPIClient(id, r.c.token, r.prefix, r.hist, r.sc.load.timeout)
	defer a.close()
	for {
		select {
		case <-stop:
			return
		default:
		}
		n := r.c.nodes[rnd.IntN(len(r.c.nodes))]
		var o op
		if r.sc.load.objects > 0 && rnd.IntN(100) < 30 {
			o = r.objectOp(a, rnd, n)
		} else {
			kind := r.randomKind(rnd)
			t := r.tenant(rnd.IntN(r.sc.load.tenants))
			v := 0
			if kind == opSetRPM {
				v = r.nextValue()
			}
			o = a.do(n, kind, t, v)
		}
		r.hist.add(o)
		pause := r.sc.load.think
		if o.Out == outRejected && o.HTTP == 0 && pause < 20*time.Millisecond {
			pause = 20 * time.Millisecond // the node is down: do not spin on it
		}
		if pause > 0 {
			select {
			case <-stop:
				return
			case <-time.After(pause):
			}
		}
	}
}

// prober writes to its own tenant every interval, concurrently, through the
// nodes no nemesis is holding, so the history shows when writes stop and
// resume. Its writes are checked for durability, not linearizability.
func (r *run) prober(stop <-chan struct{}) {
	a := newAPIClient(r.sc.load.workers, r.c.token, r.prefix+"-probe", r.hist, 1500*time.Millisecond)
	defer a.close()
	tick := time.NewTicker(r.sc.load.probe)
	defer tick.Stop()
	// Room for every probe of a whole timeout: when probes hang (a frozen or
	// vanished leader), later ones must still go out, or the measured
	// failover would be the probe timeout.
	sem := make(chan struct{}, 2*int(a.timeout/r.sc.load.probe)+8)
	var wg sync.WaitGroup
	defer wg.Wait()
	i := 0
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		nodes := r.healthyNodes()
		if len(nodes) == 0 {
			continue
		}
		n := nodes[i%len(nodes)]
		i++
		select {
		case sem <- struct{}{}:
		default:
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			o := a.do(n, opSetRPM, r.probeTenant(), r.nextValue())
			o.Probe = true
			r.hist.add(o)
		}()
	}
}

// finalReads reads every tenant (and its keys and rules) linearizably once
// the faults are over, so the history ends with what the cluster finally holds.
func (r *run) finalReads(ctx context.Context, a *apiClient) {
	for i := 0; i < r.sc.load.tenants; i++ {
		r.mustDo(ctx, a, opReadRPM, r.tenant(i), 0)
		r.mustDo(ctx, a, opReadStatus, r.tenant(i), 0)
	}
	for i := 0; i < r.sc.load.objects; i++ {
		r.mustDo(ctx, a, opListKeys, r.objTenantName(i), 0)
		r.mustDo(ctx, a, opListRules, r.objTenantName(i), 0)
	}
}

// ---- leader monitor ----

// leaderMonitor polls every node's /health and counts leader changes and
// elections (term increases) while a scenario runs.
type leaderMonitor struct {
	c    *cluster
	done chan struct{}
	wg   sync.WaitGroup

	mu        sync.Mutex
	startTerm uint64
	maxTerm   uint64
	leaders   []string // successive leaders, as (term, id) first seen
	lastTerm  uint64
}

func startLeaderMonitor(c *cluster) *leaderMonitor {
	m := &leaderMonitor{c: c, done: make(chan struct{})}
	for _, n := range c.nodes {
		if h, err := c.health(context.Background(), n); err == nil && h.Term > m.startTerm {
			m.startTerm = h.Term
		}
	}
	m.maxTerm = m.startTerm
	for _, n := range c.nodes {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				if h, err := c.health(context.Background(), n); err == nil {
					m.observe(h)
				}
				select {
				case <-m.done:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	return m
}

func (m *leaderMonitor) observe(h health) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h.Term > m.maxTerm {
		m.maxTerm = h.Term
	}
	if h.Role == "leader" && h.Term > m.lastTerm {
		m.lastTerm = h.Term
		m.leaders = append(m.leaders, fmt.Sprintf("%s@%d", h.NodeID, h.Term))
	}
}

func (m *leaderMonitor) stop() {
	close(m.done)
	m.wg.Wait()
}

// changes returns how many times leadership moved and how many terms began.
func (m *leaderMonitor) changes() (leaderChanges int, elections uint64, seq []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := 1; i < len(m.leaders); i++ {
		prev, _, _ := strings.Cut(m.leaders[i-1], "@")
		cur, _, _ := strings.Cut(m.leaders[i], "@")
		if cur != prev {
			leaderChanges++
		}
	}
	return leaderChanges, m.maxTerm - m.startTerm, append([]string(nil), m.leaders...)
}

// ---- availability figures from the history ----

// recoveryAfter is the time from t0 to the first acknowledged write invoked
// at or after invokedAfter (-1 if none).
func recoveryAfter(ops []op, t0, invokedAfter int64) time.Duration {
	best := int64(-1)
	for _, o := range ops {
		if o.Kind.isWrite() && o.Out == outOK && o.Call >= invokedAfter && (best < 0 || o.Ret < best) {
			best = o.Ret
		}
	}
	if best < 0 {
		return -1
	}
	return time.Duration(best - t0)
}

func durations(ds []time.Duration) string {
	if len(ds) == 0 {
		return "–"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	f := func(d time.Duration) string {
		if d < 0 {
			return "never"
		}
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
	if len(s) == 1 {
		return f(s[0])
	}
	return fmt.Sprintf("%s / %s / %s", f(s[0]), f(s[len(s)/2]), f(s[len(s)-1]))
}
