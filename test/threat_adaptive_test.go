package test

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/server"
	"github.com/allsource/guard/threat"
)

// adaptiveSim drives the adaptive limiter on an injected clock: every tick
// two edges report the tenant's usage (demand split between them; admitted
// is what the current limit lets through, less any extra denials), the
// limiter decides, and a decided change becomes the tenant's limit — what
// the leader's CmdSetRateLimit does.
type adaptiveSim struct {
	t     *testing.T
	a     *threat.Adaptive
	now   time.Time
	lim   fsm.RateLimit
	log   []fsm.RateLimit // every change, in order
	seq   uint64
	cpu   float64
	queue int
}

func newAdaptiveSim(t *testing.T, rpm, min, max int) *adaptiveSim {
	a, err := threat.NewAdaptive(threat.AdaptiveConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return &adaptiveSim{t: t, a: a, now: threatMonday.Add(12 * time.Hour),
		lim: fsm.RateLimit{Tenant: "acme", RequestsPerMinute: rpm, Burst: rpm / 10, MinRequestsPerMinute: min,
			MaxRequestsPerMinute: max, BaseRequestsPerMinute: rpm}}
}

// tick runs one decision period with demand (requests per minute) of which
// denied more are refused beyond the limit.
func (s *adaptiveSim) tick(demand, denied float64) {
	s.t.Helper()
	tick := s.a.Config().Tick
	admitted := math.Max(0, math.Min(demand, float64(s.lim.RequestsPerMinute))-denied)
	s.seq++
	per := tick.Minutes() / 2 // each edge's share of a tick's requests
	for _, edge := range []string{"edge-1", "edge-2"} {
		err := s.a.Report(threat.UsageReport{Edge: edge, Seq: s.seq, Interval: tick,
			Tenants: map[string]threat.TenantUsage{"acme": {Demand: demand * per, Admitted: admitted * per}},
			Load:    threat.Load{CPU: s.cpu, QueueDepth: s.queue}}, s.now)
		if err != nil {
			s.t.Fatalf("report: %v", err)
		}
	}
	s.now = s.now.Add(tick)
	for _, c := range s.a.Decide(s.now, func(string) (*fsm.RateLimit, bool) { l := s.lim; return &l, true }, threat.Load{}) {
		if c.From != s.lim.RequestsPerMinute || c.Cmd.Tenant != "acme" {
			s.t.Fatalf("change %+v from a limit of %d", c, s.lim.RequestsPerMinute)
		}
		if e := c.Cmd.Validate(); e != nil {
			s.t.Fatalf("decided an invalid command %+v: %v", c.Cmd, e)
		}
		s.lim.RequestsPerMinute, s.lim.Burst, s.lim.Reason = c.Cmd.RequestsPerMinute, c.Cmd.Burst, c.Cmd.Reason
		s.lim.BaseRequestsPerMinute, s.lim.ObservedRequestsPerMinute = c.Cmd.BaseRequestsPerMinute, c.Cmd.ObservedRequestsPerMinute
		s.log = append(s.log, s.lim)
	}
}

func (s *adaptiveSim) run(n int, demand, denied float64) {
	s.t.Helper()
	for i := 0; i < n; i++ {
		s.tick(demand, denied)
	}
}

func (s *adaptiveSim) figures() []int {
	var out []int
	for _, l := range s.log {
		out = append(out, l.RequestsPerMinute)
	}
	return out
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestAdaptiveRampUp: demand of 1,500 rpm against a 1,000 rpm limit keeps
// utilisation at 100%; every five minutes (the RaiseAfter streak, restarted
// by each move) the limit rises by 25% until utilisation falls below 80%.
func TestAdaptiveRampUp(t *testing.T) {
	s := newAdaptiveSim(t, 1000, 500, 4000)
	s.run(9, 1500, 0) // 4.5 minutes: not yet
	if len(s.log) != 0 {
		t.Fatalf("raised before the streak was long enough: %v", s.figures())
	}
	s.run(60, 1500, 0)
	if want := []int{1250, 1563, 1954}; !equalInts(s.figures(), want) {
		t.Fatalf("ramp = %v, want %v", s.figures(), want)
	}
	if r := s.log[0].Reason; !strings.Contains(r, "utilisation 100%") || !strings.Contains(r, "raised") {
		t.Errorf("reason = %q", r)
	}
	if s.lim.Burst != 195 || s.lim.BaseRequestsPerMinute != 1000 {
		t.Errorf("burst %d base %d; want burst scaled with the limit (195) and the base kept (1000)", s.lim.Burst, s.lim.BaseRequestsPerMinute)
	}
}

// TestAdaptiveBounds: runaway demand raises the limit to the maximum and no
// further; sustained load shedding cuts it to the minimum and no further.
func TestAdaptiveBounds(t *testing.T) {
	s := newAdaptiveSim(t, 1000, 500, 4000)
	s.run(200, 1e6, 0)
	if s.lim.RequestsPerMinute != 4000 {
		t.Fatalf("limit = %d, want the maximum 4000 (changes %v)", s.lim.RequestsPerMinute, s.figures())
	}
	for _, v := range s.figures() {
		if v > 4000 {
			t.Fatalf("went above the maximum: %v", s.figures())
		}
	}
	s.cpu = 0.97
	s.run(20, 1e6, 0)
	if s.lim.RequestsPerMinute != 500 {
		t.Fatalf("limit = %d under load, want the minimum 500 (changes %v)", s.lim.RequestsPerMinute, s.figures())
	}
	for _, v := range s.figures() {
		if v < 500 {
			t.Fatalf("went below the minimum: %v", s.figures())
		}
	}
}

// TestAdaptiveIdleDecay: a limit raised to 2,000 (base 1,000) with demand of
// 100 rpm comes down by 25% every 15 minutes, to the base and no lower.
func TestAdaptiveIdleDecay(t *testing.T) {
	s := newAdaptiveSim(t, 2000, 500, 4000)
	s.lim.BaseRequestsPerMinute = 1000
	s.run(29, 100, 0)
	if len(s.log) != 0 {
		t.Fatalf("decayed within 15 minutes: %v", s.figures())
	}
	s.run(200, 100, 0)
	if want := []int{1500, 1125, 1000}; !equalInts(s.figures(), want) {
		t.Fatalf("decay = %v, want %v", s.figures(), want)
	}
	if r := s.log[2].Reason; !strings.Contains(r, "lowered toward the base 1000") {
		t.Errorf("reason = %q", r)
	}
}

// TestAdaptiveAnomalyThrottle: a tenant normally asking 700 rpm jumps to
// 2,800 (4× normal): at the next decision its limit is cut to half, the
// burst does not enter its baseline, and when demand is normal again the
// limit is restored. The baseline travels with each change, so a new leader
// throttles at once.
func TestAdaptiveAnomalyThrottle(t *testing.T) {
	s := newAdaptiveSim(t, 1000, 200, 4000)
	s.run(20, 700, 0)
	if len(s.log) != 0 {
		t.Fatalf("changed under normal demand: %v", s.figures())
	}
	s.tick(2800, 0)
	if want := []int{500}; !equalInts(s.figures(), want) {
		t.Fatalf("throttle = %v, want %v", s.figures(), want)
	}
	if r := s.lim.Reason; !strings.Contains(r, "anomaly throttle") || !strings.Contains(r, "4.0× the normal 700 rpm") {
		t.Errorf("reason = %q", r)
	}
	if o := s.lim.ObservedRequestsPerMinute; o != 700 {
		t.Errorf("replicated baseline = %v, want 700", o)
	}
	s.run(10, 2800, 0) // the burst goes on: no further cuts, baseline untouched
	if len(s.log) != 1 {
		t.Fatalf("changes during the burst: %v", s.figures())
	}
	s.tick(700, 0)
	if want := []int{500, 1000}; !equalInts(s.figures(), want) || !strings.Contains(s.lim.Reason, "anomaly over") {
		t.Fatalf("after the burst %v (%q), want %v", s.figures(), s.lim.Reason, want)
	}
	if o := s.lim.ObservedRequestsPerMinute; o != 700 {
		t.Errorf("baseline after the burst = %v, want 700 (the burst was not learned)", o)
	}

	// A new leader: fresh limiter state, warm from the replicated baseline.
	a2, _ := threat.NewAdaptive(threat.AdaptiveConfig{})
	a2.Track("acme", s.lim.ObservedRequestsPerMinute)
	s.a = a2
	s.tick(2500, 0)
	if got := s.lim.RequestsPerMinute; got != 500 || !strings.Contains(s.lim.Reason, "anomaly throttle") {
		t.Fatalf("new leader: limit %d (%q), want an immediate throttle to 500", got, s.lim.Reason)
	}
}

// TestAdaptiveLoadShedding: CPU at 95% on an edge cuts every adaptive limit
// by 30% per decision (bounded by the minimum); a deep server queue does the
// same; when the load is gone the limit climbs back to the base in 25% steps.
func TestAdaptiveLoadShedding(t *testing.T) {
	s := newAdaptiveSim(t, 1000, 400, 4000)
	s.run(4, 600, 0)
	s.cpu = 0.95
	s.run(2, 600, 0)
	if want := []int{700, 490}; !equalInts(s.figures(), want) || !strings.Contains(s.lim.Reason, "load shedding: cpu 95%") {
		t.Fatalf("shedding = %v (%q), want %v", s.figures(), s.lim.Reason, want)
	}
	s.cpu = 0.2
	s.run(20, 300, 0)
	if want := []int{700, 490, 613, 767, 959, 1000}; !equalInts(s.figures(), want) {
		t.Fatalf("recovery = %v, want %v", s.figures(), want)
	}
	s.queue = 5000
	s.tick(300, 0)
	if s.lim.RequestsPerMinute != 700 || !strings.Contains(s.lim.Reason, "queue depth 5000") {
		t.Fatalf("queue shedding: %d (%q)", s.lim.RequestsPerMinute, s.lim.Reason)
	}
}

// TestAdaptiveDeniedNotServed: 900 rpm of demand against a 1,000 limit, but
// 600 of it denied (another rule refuses it): utilisation is what was
// served, 30%, so the limit is not raised — counting denials would have
// read 90% and raised it.
func TestAdaptiveDeniedNotServed(t *testing.T) {
	s := newAdaptiveSim(t, 1000, 500, 4000)
	s.run(60, 900, 600)
	for _, v := range s.figures() {
		if v > 1000 {
			t.Fatalf("raised on denied demand: %v", s.figures())
		}
	}
}

// TestAdaptiveNoReportsNoChange: with every edge silent (an edge outage),
// nothing is known about usage and nothing changes.
func TestAdaptiveNoReportsNoChange(t *testing.T) {
	s := newAdaptiveSim(t, 2000, 500, 4000)
	s.lim.BaseRequestsPerMinute = 1000
	s.a.Track("acme", 0)
	for i := 0; i < 100; i++ {
		s.now = s.now.Add(30 * time.Second)
		if cs := s.a.Decide(s.now, func(string) (*fsm.RateLimit, bool) { l := s.lim; return &l, true }, threat.Load{}); len(cs) != 0 {
			t.Fatalf("changed without reports: %+v", cs)
		}
	}
}

// TestAdaptiveThroughTheServer: a server's leader takes edge usage reports
// at POST /v1/internal/usage (join token), decides on its own ticker, and
// applies the change through raft: GET …/rate-limit shows the new figure
// with its reason, and the audit log has it.
func TestAdaptiveThroughTheServer(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	_, n, op := threatServer(t, func(c *server.Config) {
		c.Threat.Adaptive = threat.AdaptiveConfig{Tick: 100 * time.Millisecond, RaiseAfter: 300 * time.Millisecond,
			MinInterval: time.Nanosecond, ReportTTL: time.Second}
	})
	api := newAPIClient(scaled(10 * time.Second))
	addr := n.addr()
	api.must(t, http.StatusCreated, http.MethodPost, addr, "/v1/tenants", op, map[string]string{"id": "acme"})
	api.must(t, http.StatusOK, http.MethodPut, addr, "/v1/tenants/acme/rate-limit", op,
		map[string]int{"requests_per_minute": 1000, "burst": 100, "min_requests_per_minute": 500, "max_requests_per_minute": 4000})

	post := func(token string, rep threat.UsageReport) int {
		b, _ := json.Marshal(rep)
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+threat.UsagePath, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("X-Allsource-Join-Token", token)
		}
		hr, err := api.hc.Do(req)
		if err != nil {
			t.Errorf("usage report: %v", err)
			return 0
		}
		hr.Body.Close()
		return hr.StatusCode
	}
	if st := post("", threat.UsageReport{Edge: "e1", Interval: time.Second}); st != http.StatusUnauthorized {
		t.Fatalf("a report without the join token: %d, want 401", st)
	}
	if st := post(testJoinToken, threat.UsageReport{Edge: "e1", Interval: time.Second,
		Tenants: map[string]threat.TenantUsage{"acme": {Demand: 1, Admitted: 5}}}); st != http.StatusBadRequest {
		t.Fatalf("a report admitting more than asked: %d, want 400", st)
	}

	// An edge reports 2,000 rpm of demand of which it admitted 1,000 (the
	// limit), every 100 ms.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for seq := uint64(1); ; seq++ {
			per := 2000.0 / 60 * 0.1 // requests per 100 ms
			if st := post(testJoinToken, threat.UsageReport{Edge: "e1", Seq: seq, Interval: 100 * time.Millisecond,
				Tenants: map[string]threat.TenantUsage{"acme": {Demand: per, Admitted: per / 2}}}); st != http.StatusNoContent {
				t.Errorf("usage report answered %d", st)
				return
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	defer func() { close(stop); <-done }()
	var lim fsm.RateLimit
	threatWait(t, 20*time.Second, "the adaptive limiter to raise acme's limit", func() bool {
		api.must(t, http.StatusOK, http.MethodGet, addr, "/v1/tenants/acme/rate-limit", op, nil).decode(t, &lim)
		return lim.RequestsPerMinute > 1000
	})
	if lim.RequestsPerMinute != 1250 || lim.BaseRequestsPerMinute != 1000 || !strings.HasPrefix(lim.Reason, "adaptive: utilisation 100%") ||
		lim.MinRequestsPerMinute != 500 || lim.MaxRequestsPerMinute != 4000 {
		t.Fatalf("rate limit after the raise = %+v", lim)
	}
	var audited bool
	_ = n.srv.FSM().View(func(rd *fsm.Reader) error {
		es, _ := rd.Audit(fsm.AuditQuery{Tenant: "acme", Action: fsm.ActionConfigChanged, Limit: 100})
		for _, e := range es {
			audited = audited || strings.HasPrefix(e.Metadata["reason"], "adaptive:") && e.Actor.Name == "adaptive-limits"
		}
		return nil
	})
	if !audited {
		t.Error("the adaptive change is not in the audit log")
	}
}
