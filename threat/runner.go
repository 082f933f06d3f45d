package threat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/prometheus/client_golang/prometheus"
)

// Node is what the runner needs of the raft node (satisfied by
// *cluster.Node).
type Node interface {
	IsLeader() bool
	Apply(ctx context.Context, c fsm.Command) (*fsm.Result, error)
	// Barrier returns once every entry committed before it is applied here.
	Barrier(ctx context.Context) error
}

// Sink receives recorded anomalies (after their raft entry committed).
// Publish must not block.
type Sink interface {
	Publish(a *fsm.Anomaly)
}

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	Detect Config
	NodeID string
	FSM    *fsm.FSM
	Node   Node
	// Now is the clock for proposals (action expiries, header time) and the
	// warm-up cut-off. Detection itself reads time from the entries.
	Now    func() time.Time
	Logger *slog.Logger
	// WarmWindow is how far back a new leader replays each tenant's log to
	// warm the detectors (default 24 h, at least Detect.Window());
	// MaxWarmEntries bounds that replay per tenant (default 200,000).
	WarmWindow     time.Duration
	MaxWarmEntries int
	// Watermarks travel with every detection. Without one, a tenant's mark
	// is replicated by a checkpoint (looked at every CheckpointEvery, default
	// 30 s) once CheckpointEntries entries (default 1,000) or CheckpointAge
	// (default 10 min) have been analysed past it: that bounds what a new
	// leader re-analyses, without a raft write for every quiet second.
	CheckpointEvery   time.Duration
	CheckpointEntries int
	CheckpointAge     time.Duration
	// PollEvery is how often leadership is checked (default 100 ms).
	PollEvery time.Duration
	// ExemptIPs are never blocked automatically (servers, load balancers).
	ExemptIPs []netip.Prefix
	Sinks     []Sink
	// Registerer receives the anomaly counters (the API server's registry).
	Registerer prometheus.Registerer
}

// Runner runs the detectors on the leader over committed audit entries and
// records what they find, with its automatic responses, through raft.
type Runner struct {
	cfg     RunnerConfig
	log     *slog.Logger
	metrics *runnerMetrics

	mu     sync.Mutex
	active bool
	dirty  map[string]struct{}
	wake   chan struct{}
	// queued holds entries handed over by OnApply, per tenant in sequence
	// order, so the analysis need not decode them back from the store;
	// nQueued bounds them (beyond, entries are read from the store).
	queued  map[string][]*fsm.AuditEntry
	nQueued int

	progress sync.Map // tenant → last seq analysed in the current term
	restored atomic.Bool
	leading  atomic.Bool
	ready    atomic.Bool // warm-up done in the current term
	analysed atomic.Uint64
	recorded atomic.Uint64
}

type runnerMetrics struct {
	anomalies *prometheus.CounterVec
	actions   *prometheus.CounterVec
	entries   prometheus.Counter
}

func newRunnerMetrics(reg prometheus.Registerer) *runnerMetrics {
	m := &runnerMetrics{
		anomalies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "allsource_anomalies_total",
			Help: "Anomalies recorded by this server while it led, by type and recommended level."}, []string{"type", "level"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "allsource_anomaly_actions_total",
			Help: "Automatic responses recorded, by kind and whether they applied."}, []string{"kind", "applied"}),
		entries: prometheus.NewCounter(prometheus.CounterOpts{Name: "allsource_threat_entries_analysed_total",
			Help: "Audit entries analysed by the detectors (live, not warm-up)."}),
	}
	for _, k := range fsm.AnomalyKinds {
		for _, l := range []fsm.ResponseLevel{fsm.LevelMonitor, fsm.LevelAlert, fsm.LevelRequireMFA, fsm.LevelBlock, fsm.LevelRevokeAccess} {
			m.anomalies.WithLabelValues(string(k), string(l))
		}
	}
	if reg != nil {
		reg.MustRegister(m.anomalies, m.actions, m.entries)
	}
	return m
}

// NewRunner checks the configuration and builds a runner; Run starts it.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	if cfg.FSM == nil || cfg.Node == nil {
		return nil, errors.New("threat: runner needs the FSM and the node")
	}
	if err := cfg.Detect.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.WarmWindow == 0 {
		cfg.WarmWindow = 24 * time.Hour
	}
	cfg.WarmWindow = max(cfg.WarmWindow, cfg.Detect.Window())
	if cfg.MaxWarmEntries == 0 {
		cfg.MaxWarmEntries = 200_000
	}
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = 30 * time.Second
	}
	if cfg.CheckpointEntries == 0 {
		cfg.CheckpointEntries = 1000
	}
	if cfg.CheckpointAge == 0 {
		cfg.CheckpointAge = 10 * time.Minute
	}
	if cfg.PollEvery == 0 {
		cfg.PollEvery = 100 * time.Millisecond
	}
	return &Runner{cfg: cfg, log: cfg.Logger.With("component", "threat"), metrics: newRunnerMetrics(cfg.Registerer),
		dirty: map[string]struct{}{}, queued: map[string][]*fsm.AuditEntry{}, wake: make(chan struct{}, 1)}, nil
}

// maxQueued bounds the entries OnApply hands over in memory (about 50 MB).
const maxQueued = 100_000

// OnApply is the FSM's apply hook: it notes which tenants' audit chains grew
// and hands the new entries over. It never blocks, and does nothing unless
// this server leads.
func (r *Runner) OnApply(_ uint64, changes []fsm.Change) {
	r.mu.Lock()
	if !r.active {
		r.mu.Unlock()
		return
	}
	n := len(r.dirty)
	for i := range changes {
		c := &changes[i]
		if c.Kind != fsm.ChangeAudit {
			continue
		}
		// The change's strings share its raft batch's text (see Engine): a
		// tenant kept as a map key is a copy.
		tenant := c.Tenant
		if _, ok := r.dirty[tenant]; !ok {
			tenant = strings.Clone(tenant)
			r.dirty[tenant] = struct{}{}
		}
		if c.Audit != nil && r.nQueued < maxQueued {
			r.queued[tenant] = append(r.queued[tenant], c.Audit)
			r.nQueued++
		}
	}
	grew := len(r.dirty) > n
	r.mu.Unlock()
	if grew {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// OnRestore is the FSM's restore hook: the state was replaced by a snapshot,
// so the current term's cursors and detector state no longer describe it.
// The runner starts over from the restored watermarks. It never blocks.
func (r *Runner) OnRestore(uint64) {
	r.restored.Store(true)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Leading reports whether the runner is analysing (this server leads and
// has warmed up).
func (r *Runner) Leading() bool { return r.leading.Load() && r.ready.Load() }

// Analysed returns how many entries were analysed live by this server.
func (r *Runner) Analysed() uint64 { return r.analysed.Load() }

// AnalysedTo returns the sequence number up to which tenant's chain has been
// analysed in the current leadership term (0 when not leading).
func (r *Runner) AnalysedTo(tenant string) uint64 {
	if v, ok := r.progress.Load(tenant); ok {
		return v.(uint64)
	}
	return 0
}

// Recorded returns how many anomalies this server recorded.
func (r *Runner) Recorded() uint64 { return r.recorded.Load() }

// Run analyses while this server leads, until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.PollEvery)
	defer t.Stop()
	for {
		for r.cfg.Node.IsLeader() && ctx.Err() == nil {
			err := r.term(ctx)
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, errRestored) {
				if err != nil {
					r.log.Warn("threat detection paused", "err", err)
				}
				break
			}
			r.log.Info("threat detection restarting", "reason", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *Runner) setActive(on bool) {
	r.mu.Lock()
	r.active = on
	if !on {
		clear(r.dirty)
		clear(r.queued)
		r.nQueued = 0
	}
	r.mu.Unlock()
	r.leading.Store(on)
	if !on {
		r.ready.Store(false)
		r.progress.Clear()
	}
}

func (r *Runner) takeDirty() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.dirty))
	for t := range r.dirty {
		out = append(out, t)
	}
	clear(r.dirty)
	sort.Strings(out)
	return out
}

// termState is one leadership term's analysis.
type termState struct {
	eng     *Engine
	cursor  map[string]uint64      // last analysed seq per tenant
	hash    map[string]string      // the hash of that entry (marks carry it)
	pending map[string]pendingMark // analysed, watermark not yet replicated
	dets    []Detection
}

func newTermState(eng *Engine) *termState {
	return &termState{eng: eng, cursor: map[string]uint64{}, hash: map[string]string{}, pending: map[string]pendingMark{}}
}

type pendingMark struct {
	seq     uint64
	hash    string
	entries int       // analysed since the last replicated mark
	since   time.Time // first analysed since then (server clock)
}

var (
	errNotLeading = errors.New("threat: no longer the leader")
	errRestored   = errors.New("threat: the state was restored from a snapshot; starting over")
)

// term analyses from the replicated watermarks while this server leads.
func (r *Runner) term(ctx context.Context) error {
	r.setActive(true)
	defer r.setActive(false)
	r.restored.Store(false)
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := barrier(bctx, r.cfg.Node)
	cancel()
	if err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	eng, err := NewEngine(r.cfg.Detect)
	if err != nil {
		return err
	}
	st := newTermState(eng)
	started := time.Now()
	warmed, err := r.warm(st)
	if err != nil {
		return err
	}
	r.ready.Store(true)
	r.log.Info("threat detection leading", "tenants", len(st.cursor), "warm_entries", warmed,
		"warm_took", time.Since(started).Round(time.Millisecond))

	poll := time.NewTicker(r.cfg.PollEvery)
	defer poll.Stop()
	checkpoint := time.NewTicker(r.cfg.CheckpointEvery)
	defer checkpoint.Stop()
	for {
		if r.restored.Load() {
			return errRestored
		}
		for _, t := range r.takeDirty() {
			if err := r.analyse(ctx, st, t); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-poll.C:
			if !r.cfg.Node.IsLeader() {
				return errNotLeading
			}
		case <-checkpoint.C:
			if len(st.pending) > 0 {
				if err := r.checkpoint(ctx, st, false); err != nil {
					return err
				}
			}
		}
	}
}

// warm restores cool-downs from recently recorded anomalies, replays each
// tenant's recent log up to its watermark without raising anything, and
// marks every tenant for analysis after its watermark.
func (r *Runner) warm(st *termState) (int, error) {
	now := r.cfg.Now()
	cutoff := now.Add(-r.cfg.WarmWindow)
	type plan struct {
		tenant      string
		start, mark uint64
		head        uint64
	}
	var plans []plan
	coolSince := now.Add(-max(st.eng.cfg.Cooldown, time.Hour))
	err := r.cfg.FSM.View(func(rd *fsm.Reader) error {
		marks := rd.ThreatMarks()
		for _, h := range rd.AuditHeads() {
			for _, a := range rd.RecentAnomalies(h.Tenant, coolSince) {
				st.eng.Suppress(a.Tenant, a.Key, a.Level, a.TriggerTime.Add(st.eng.cooldownOf(a.Kind)))
			}
			if h.Seq < h.FirstSeq {
				st.cursor[h.Tenant] = h.Seq
				continue
			}
			mark := min(marks[h.Tenant], h.Seq)
			start := firstSince(rd, h, cutoff)
			if h.Seq >= uint64(r.cfg.MaxWarmEntries) {
				start = max(start, h.Seq-uint64(r.cfg.MaxWarmEntries)+1)
			}
			plans = append(plans, plan{tenant: h.Tenant, start: start, mark: mark, head: h.Seq})
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	warmed := 0
	st.eng.SetWarm(true)
	for _, p := range plans {
		cur := p.start - 1
		for cur < p.mark {
			page, err := r.readPage(p.tenant, cur, analysePage)
			if err != nil {
				return warmed, err
			}
			if len(page) == 0 {
				break
			}
			for _, e := range page {
				if e.Seq > p.mark {
					break
				}
				st.eng.Process(e)
				cur = e.Seq
				warmed++
			}
			if len(page) < analysePage {
				break
			}
		}
		st.cursor[p.tenant] = max(p.mark, p.start-1)
	}
	st.eng.SetWarm(false)
	r.mu.Lock()
	for _, p := range plans {
		if p.head > st.cursor[p.tenant] {
			r.dirty[p.tenant] = struct{}{}
		}
	}
	r.mu.Unlock()
	return warmed, nil
}

// firstSince finds the first retained entry of h's chain not older than
// cutoff (entries are nearly time-ordered; a binary search is close enough
// for warming).
func firstSince(rd *fsm.Reader, h fsm.AuditHead, cutoff time.Time) uint64 {
	at := func(seq uint64) *fsm.AuditEntry {
		es, _ := rd.Audit(fsm.AuditQuery{Tenant: h.Tenant, After: seq - 1, Limit: 1})
		if len(es) == 0 {
			return nil
		}
		return es[0]
	}
	if e := at(h.Seq); e == nil || e.Time.Before(cutoff) {
		return h.Seq + 1
	}
	lo, hi := h.FirstSeq, h.Seq // answer in [lo, hi]
	for lo < hi {
		mid := lo + (hi-lo)/2
		if e := at(mid); e != nil && e.Time.Before(cutoff) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

const (
	analysePage = 1000
	// maxDetsPerRecord bounds the anomalies of one command (fsm allows 1000;
	// one entry raises at most a handful).
	maxDetsPerRecord = 256
	maxMarks         = 5000
)

// takeQueued removes and returns the entries handed over for tenant.
func (r *Runner) takeQueued(tenant string) []*fsm.AuditEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queued[tenant]
	delete(r.queued, tenant)
	r.nQueued -= len(q)
	return q
}

// nextPage returns the next entries of tenant after cursor: from the handed
// over ones q when they continue the cursor, otherwise from the store (up
// to where q resumes). It returns the rest of q.
func (r *Runner) nextPage(tenant string, cursor uint64, q []*fsm.AuditEntry) (page, rest []*fsm.AuditEntry, err error) {
	for len(q) > 0 && q[0].Seq <= cursor {
		q = q[1:]
	}
	if len(q) > 0 && q[0].Seq == cursor+1 {
		n := 1
		for n < len(q) && n < analysePage && q[n].Seq == q[n-1].Seq+1 {
			n++
		}
		return q[:n], q[n:], nil
	}
	limit := analysePage
	if len(q) > 0 {
		limit = int(min(uint64(limit), q[0].Seq-cursor-1))
	}
	page, err = r.readPage(tenant, cursor, limit)
	return page, q, err
}

// analyse runs the detectors over tenant's entries after its cursor and
// records what they raise, with the watermark of the entry that raised it.
func (r *Runner) analyse(ctx context.Context, st *termState, tenant string) error {
	q := r.takeQueued(tenant)
	for {
		page, rest, err := r.nextPage(tenant, st.cursor[tenant], q)
		if err != nil {
			return err
		}
		q = rest
		if len(page) == 0 {
			return nil
		}
		for i, e := range page {
			st.dets = append(st.dets, st.eng.Process(e)...)
			st.cursor[tenant], st.hash[tenant] = e.Seq, e.Hash
			if len(st.dets) >= maxDetsPerRecord || len(st.dets) > 0 && i == len(page)-1 {
				if err := r.record(ctx, fsm.ThreatMark{Tenant: tenant, Seq: e.Seq, Hash: e.Hash}, st.dets); err != nil {
					return err
				}
				st.dets = st.dets[:0]
				delete(st.pending, tenant)
			} else {
				pm, ok := st.pending[tenant]
				if !ok {
					pm.since = time.Now()
				}
				pm.seq, pm.hash, pm.entries = e.Seq, e.Hash, pm.entries+1
				st.pending[tenant] = pm
			}
		}
		// The last hash is kept (and in a pending mark): a copy, since a
		// handed-over entry's strings share its raft batch's text (see
		// Engine).
		h := strings.Clone(st.hash[tenant])
		st.hash[tenant] = h
		if pm, ok := st.pending[tenant]; ok {
			pm.hash = h
			st.pending[tenant] = pm
		}
		r.analysed.Add(uint64(len(page)))
		r.metrics.entries.Add(float64(len(page)))
		r.progress.Store(tenant, st.cursor[tenant])
		// Go on until the store has nothing more: entries beyond what was
		// handed over (the hand-over is bounded) are read from it.
	}
}

// readPage reads up to n entries of tenant's chain after seq, decoding them
// on up to GOMAXPROCS goroutines.
func (r *Runner) readPage(tenant string, after uint64, n int) ([]*fsm.AuditEntry, error) {
	var raw [][]byte
	_ = r.cfg.FSM.View(func(rd *fsm.Reader) error { raw = rd.AuditRaw(tenant, after, n); return nil })
	out := make([]*fsm.AuditEntry, len(raw))
	workers := min(runtime.GOMAXPROCS(0), 4, max(1, len(raw)/64))
	var wg sync.WaitGroup
	errs := make([]error, workers)
	for w := 0; w < workers; w++ {
		lo, hi := w*len(raw)/workers, (w+1)*len(raw)/workers
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				e, err := fsm.DecodeAuditRecord(raw[i])
				if err != nil {
					errs[w] = fmt.Errorf("audit entry of %q after %d: %w", tenant, after, err)
					return
				}
				out[i] = e
			}
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// record proposes a tenant's watermark with the detections raised up to it
// and their planned actions, as one command.
func (r *Runner) record(ctx context.Context, mark fsm.ThreatMark, dets []Detection) error {
	now := r.cfg.Now()
	var pol fsm.ThreatPolicy
	_ = r.cfg.FSM.View(func(rd *fsm.Reader) error { pol = rd.ThreatPolicy(mark.Tenant); return nil })
	cmd := fsm.RecordAnomaliesCmd{Marks: []fsm.ThreatMark{mark}}
	for i := range dets {
		d := &dets[i]
		cmd.Anomalies = append(cmd.Anomalies, ToAnomaly(d, Plan(d, pol, now, r.cfg.ExemptIPs)))
	}
	return r.propose(ctx, cmd, now)
}

// checkpoint replicates the watermarks of tenants analysed far enough
// (CheckpointEntries, CheckpointAge) past their last replicated one; all of
// them when force is set.
func (r *Runner) checkpoint(ctx context.Context, st *termState, force bool) error {
	var marks []fsm.ThreatMark
	for t, pm := range st.pending {
		if force || pm.entries >= r.cfg.CheckpointEntries || time.Since(pm.since) >= r.cfg.CheckpointAge {
			marks = append(marks, fsm.ThreatMark{Tenant: t, Seq: pm.seq, Hash: pm.hash})
		}
	}
	sort.Slice(marks, func(i, j int) bool { return marks[i].Tenant < marks[j].Tenant })
	now := r.cfg.Now()
	for len(marks) > 0 {
		n := min(len(marks), maxMarks)
		if err := r.propose(ctx, fsm.RecordAnomaliesCmd{Marks: marks[:n]}, now); err != nil {
			return err
		}
		for _, m := range marks[:n] {
			delete(st.pending, m.Tenant)
		}
		marks = marks[n:]
	}
	return nil
}

func (r *Runner) propose(ctx context.Context, cmd fsm.RecordAnomaliesCmd, now time.Time) error {
	c, err := fsm.NewCommand(fsm.CmdRecordAnomalies, fsm.Header{
		Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: r.cfg.NodeID, Name: "threat-detector"},
		Time:      now.UnixNano()}, &cmd)
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	res, err := apply(actx, r.cfg.Node, c)
	cancel()
	if err != nil {
		return fmt.Errorf("record anomalies: %w", err)
	}
	if res.Err != nil {
		// A bug in what we proposed, not a raft failure: say so and go on
		// (stopping would stop detection for every tenant).
		r.log.Error("anomaly record refused", "err", res.Err)
		return nil
	}
	rr, ok := res.Value.(*fsm.RecordResult)
	if !ok {
		return nil
	}
	if rr.Skipped > 0 {
		r.log.Info("anomalies already recorded", "skipped", rr.Skipped)
	}
	for _, a := range rr.Recorded {
		r.recorded.Add(1)
		r.metrics.anomalies.WithLabelValues(string(a.Kind), string(a.Level)).Inc()
		for _, act := range a.Actions {
			r.metrics.actions.WithLabelValues(string(act.Kind), fmt.Sprint(act.Applied)).Inc()
		}
		r.log.Warn("anomaly detected", "tenant", a.Tenant, "id", a.ID, "kind", a.Kind, "score", a.Score,
			"level", a.Level, "summary", a.Summary, "actions", len(a.Actions))
		for _, s := range r.cfg.Sinks {
			s.Publish(a)
		}
	}
	return nil
}

// apply proposes c and waits for it, or for ctx: a raft call does not watch
// the context, and a server shutting down must not wait out raft's timeout
// (the call itself ends when raft shuts down).
func apply(ctx context.Context, n Node, c fsm.Command) (*fsm.Result, error) {
	type out struct {
		res *fsm.Result
		err error
	}
	ch := make(chan out, 1)
	go func() {
		res, err := n.Apply(ctx, c)
		ch <- out{res, err}
	}()
	select {
	case o := <-ch:
		return o.res, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// barrier is Node.Barrier bounded by ctx in the same way.
func barrier(ctx context.Context, n Node) error {
	ch := make(chan error, 1)
	go func() { ch <- n.Barrier(ctx) }()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
