package enforcement

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/allsource/guard/internal/tally"
)

// Config is everything an Edge needs. The command line (allsource edge)
// and a service that embeds an edge both fill it.
type Config struct {
	NodeID string
	// DataDir persists the view and the audit spool ("" keeps both in
	// memory: a restarted edge then waits for a server before deciding).
	DataDir string
	// JoinToken authenticates the edge to the servers and opens the sealed
	// secrets of the view.
	JoinToken string
	// Servers are seed HTTP addresses (host:port) of any servers; gossip
	// and the servers themselves tell the edge about the others.
	Servers []string
	// Scheme is http or https; ClientTLS is the edge's mTLS client side.
	Scheme    string
	ClientTLS *tls.Config
	// Upstream, when set, is the service the reverse proxy forwards to.
	Upstream *url.URL
	// CheckPath is the forward-auth endpoint (default /v1/check).
	CheckPath string
	// MaxStaleness > 0 denies every request (503) once no server has
	// confirmed the view for that long (default: unlimited).
	MaxStaleness time.Duration
	// TrustedProxies may set X-Forwarded-For / X-Real-IP.
	TrustedProxies []netip.Prefix
	Routes         *RouteMap
	// Issuer, Audience and Leeway of access tokens (defaults
	// allsource-guard, allsource-guard, 30 s: the servers' defaults).
	Issuer, Audience string
	Leeway           time.Duration
	DevMode          bool
	// SecurityHeaders (nil: DefaultSecurityHeadersConfig) and CORS (nil: none).
	SecurityHeaders *SecurityHeadersConfig
	CORS            *CORSConfig
	Fleet           FleetConfig
	// AuditFlushInterval and AuditSpoolBytes tune audit shipping.
	AuditFlushInterval time.Duration
	AuditSpoolBytes    int64
	TokenCacheSize     int
	// OnView, when set, is called after each new view is published (tests
	// and embedding services that want to know when a change arrived).
	OnView  func(*View)
	Clock   Clock
	Logger  *slog.Logger
	Version string
}

// Edge is one enforcement edge: the replica of the view, the decision
// pipeline and its three front ends, fleet-wide rate limiting and audit
// shipping.
type Edge struct {
	cfg       Config
	log       *slog.Logger
	pipeline  *Pipeline
	responder *Responder
	replica   *Replica
	shipper   *Shipper
	fleet     *Fleet
	counts    *tally.Meter
	httpc     *http.Client
	reg       *prometheus.Registry

	mu         sync.Mutex
	known      []string // server HTTP addresses learned from the servers
	knownAt    time.Time
	membership Membership
	gossipJoin func([]string) error
	joined     bool

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closed  atomic.Bool
	started time.Time
}

// New builds an edge and loads its persisted view (it enforces from that
// view at once); Start connects it.
func New(cfg Config) (*Edge, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("edge: a node id is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Scheme == "" {
		cfg.Scheme = "http"
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.CheckPath == "" {
		cfg.CheckPath = "/v1/check"
	}
	e := &Edge{cfg: cfg, log: cfg.Logger.With("component", "edge"), started: time.Now()}
	shc := DefaultSecurityHeadersConfig()
	if cfg.SecurityHeaders != nil {
		shc = *cfg.SecurityHeaders
	}
	sec, err := NewSecurityHeaders(shc)
	if err != nil {
		return nil, err
	}
	var cors *CORS
	if cfg.CORS != nil {
		if cors, err = NewCORS(*cfg.CORS); err != nil {
			return nil, err
		}
	}
	e.responder = NewResponder(sec, cors)
	resolver, err := NewClientIPResolver(cfg.TrustedProxies)
	if err != nil {
		return nil, err
	}
	buckets := NewBuckets(BucketsConfig{Clock: cfg.Clock})
	e.counts = tally.New()
	e.fleet = NewFleet(cfg.NodeID, cfg.Fleet, cfg.Clock, e.counts, buckets, e.budget)
	spoolDir := ""
	if cfg.DataDir != "" {
		spoolDir = filepath.Join(cfg.DataDir, "audit-spool")
	}
	e.shipper, err = NewShipper(ShipperConfig{Edge: cfg.NodeID, Dir: spoolDir, MaxSpoolBytes: cfg.AuditSpoolBytes,
		FlushInterval: cfg.AuditFlushInterval, Send: e.sendAudit, Clock: cfg.Clock, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	e.pipeline = NewPipeline(PipelineConfig{Clock: cfg.Clock, Resolver: resolver, Routes: cfg.Routes,
		Issuer: cfg.Issuer, Audience: cfg.Audience, Leeway: cfg.Leeway, DevMode: cfg.DevMode,
		TokenCacheSize: cfg.TokenCacheSize, Buckets: buckets, Counts: e.counts, Audit: e.shipper,
		MaxStaleness: cfg.MaxStaleness, Staleness: func() time.Duration { return e.replica.Staleness() }})
	e.httpc = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		Proxy:           nil,
		DialContext:     (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		TLSClientConfig: cfg.ClientTLS, MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second}}
	viewDir := ""
	if cfg.DataDir != "" {
		viewDir = filepath.Join(cfg.DataDir, "view")
	}
	e.replica, err = NewReplica(ReplicaConfig{NodeID: cfg.NodeID, JoinToken: cfg.JoinToken, DataDir: viewDir,
		Scheme: cfg.Scheme, TLS: cfg.ClientTLS, Candidates: e.candidates, Discover: e.discover,
		Publish: e.publish, Clock: cfg.Clock, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	e.reg = prometheus.NewRegistry()
	e.registerMetrics()
	return e, nil
}

// Pipeline returns the decision pipeline (for benchmarks and embedding).
func (e *Edge) Pipeline() *Pipeline { return e.pipeline }

// Replica returns the view replica.
func (e *Edge) Replica() *Replica { return e.replica }

// Shipper returns the audit shipper.
func (e *Edge) Shipper() *Shipper { return e.shipper }

// Counts returns the per-tenant request counts the pipeline records (once
// per rate-limited request); fleet limiting reads them, and so can a usage
// reporter (threat.NewUsageMeter).
func (e *Edge) Counts() *tally.Meter { return e.counts }

// Fleet returns the fleet rate-limit coordinator.
func (e *Edge) Fleet() *Fleet { return e.fleet }

// Responder returns the response decorator.
func (e *Edge) Responder() *Responder { return e.responder }

// Registry is the edge's Prometheus registry.
func (e *Edge) Registry() *prometheus.Registry { return e.reg }

// SetMembership installs gossip: m for peers and server discovery, join to
// contact gossip addresses the servers name. Call before Start.
func (e *Edge) SetMembership(m Membership, join func([]string) error) {
	e.mu.Lock()
	e.membership, e.gossipJoin = m, join
	e.mu.Unlock()
	e.fleet.SetMembership(m)
}

// OnGossipMessage takes a user message from gossip (demand reports).
func (e *Edge) OnGossipMessage(b []byte) { e.fleet.OnMessage(b) }

// Start runs the replica, the audit shipper, fleet limiting and the
// housekeeping tickers until Close.
func (e *Edge) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.wg.Add(3)
	go func() { defer e.wg.Done(); e.replica.Run(ctx) }()
	go func() { defer e.wg.Done(); e.shipper.Run() }()
	go func() { defer e.wg.Done(); e.housekeeping(ctx) }()
}

func (e *Edge) housekeeping(ctx context.Context) {
	fleet := time.NewTicker(e.fleet.Interval())
	defer fleet.Stop()
	sec := time.NewTicker(time.Second)
	defer sec.Stop()
	evict := time.NewTicker(time.Minute)
	defer evict.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-fleet.C:
			e.fleet.Tick()
		case <-sec.C:
			e.replica.Expire()
		case <-evict.C:
			e.pipeline.Buckets().EvictIdle()
			e.counts.Retain(e.hasTenant)
		}
	}
}

// Close stops the edge: the stream ends, pending audit is shipped or
// spooled (fsynced), the persisted view is already current.
func (e *Edge) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	if e.cancel != nil {
		e.cancel()
		e.shipper.Close()
		e.wg.Wait()
	}
	return nil
}

func (e *Edge) publish(v *View) {
	e.pipeline.SetView(v)
	if e.cfg.OnView != nil {
		e.cfg.OnView(v)
	}
}

// hasTenant reports whether tenant is in the current view.
func (e *Edge) hasTenant(tenant string) bool {
	v := e.pipeline.View()
	if v == nil {
		return false
	}
	_, ok := v.tenants.get(tenant)
	return ok
}

// budget is a tenant's fleet-wide budget in tokens per second.
func (e *Edge) budget(tenant string) float64 {
	v := e.pipeline.View()
	if v == nil {
		return 0
	}
	ts, ok := v.tenants.get(tenant)
	if !ok || ts.limit == nil {
		return 0
	}
	return float64(ts.limit.RequestsPerMinute) / 60
}

// candidates lists server HTTP addresses: seeds, servers learned from the
// servers, and servers seen in gossip, in random order with the leader last
// (followers carry the streams).
func (e *Edge) candidates() []string {
	e.mu.Lock()
	all := slices.Clone(e.cfg.Servers)
	all = append(all, e.known...)
	m := e.membership
	e.mu.Unlock()
	if m != nil {
		for _, mem := range m.Members() {
			if mem.Role == "server" && mem.HTTPAddr != "" {
				all = append(all, mem.HTTPAddr)
			}
		}
	}
	slices.Sort(all)
	all = slices.Compact(all)
	rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	if l := e.replica.LeaderHTTP(); l != "" {
		if i := slices.Index(all, l); i >= 0 && len(all) > 1 {
			all = append(slices.Delete(all, i, i+1), l)
		}
	}
	return all
}

// ServerURLs returns the servers' base URLs (scheme://host:port), the one
// streaming to this edge first, for components that report to the servers.
func (e *Edge) ServerURLs() []string {
	addrs := e.candidates()
	if s := e.replica.Server(); s != "" {
		addrs = append([]string{s}, slices.DeleteFunc(addrs, func(a string) bool { return a == s })...)
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = e.cfg.Scheme + "://" + a
	}
	return out
}

// watchServers is the body of GET /v1/watch/servers.
type watchServers struct {
	Leader  string `json:"leader"`
	Servers []struct {
		ID       string `json:"id"`
		HTTPAddr string `json:"http_addr"`
		Leader   bool   `json:"leader"`
	} `json:"servers"`
	Gossip []string `json:"gossip"`
}

// discover asks a server for the server list and gossip addresses, and
// joins gossip if it has not yet.
func (e *Edge) discover(ctx context.Context) {
	e.mu.Lock()
	fresh := time.Since(e.knownAt) < 30*time.Second && e.joined
	e.mu.Unlock()
	if fresh {
		return
	}
	for _, addr := range e.candidates() {
		var ws watchServers
		if err := e.getJSON(ctx, addr, "/v1/watch/servers", &ws); err != nil {
			continue
		}
		var known []string
		for _, s := range ws.Servers {
			if s.HTTPAddr != "" {
				known = append(known, s.HTTPAddr)
			}
		}
		e.mu.Lock()
		e.known, e.knownAt = known, time.Now()
		join, joined := e.gossipJoin, e.joined
		e.mu.Unlock()
		if join != nil && !joined && len(ws.Gossip) > 0 {
			if err := join(ws.Gossip); err != nil {
				e.log.Warn("joining gossip failed; fleet limits fall back to this edge's own share", "err", err)
			} else {
				e.mu.Lock()
				e.joined = true
				e.mu.Unlock()
			}
		}
		return
	}
}

func (e *Edge) getJSON(ctx context.Context, addr, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.cfg.Scheme+"://"+addr+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Allsource-Join-Token", e.cfg.JoinToken)
	resp, err := e.httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

// sendAudit posts one audit batch to a server (any server forwards it to
// the leader): the one streaming to this edge first.
func (e *Edge) sendAudit(ctx context.Context, body []byte) error {
	addrs := e.candidates()
	if s := e.replica.Server(); s != "" {
		addrs = append([]string{s}, slices.DeleteFunc(addrs, func(a string) bool { return a == s })...)
	}
	err := errors.New("no server to ship audit to")
	for _, addr := range addrs {
		req, rerr := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.Scheme+"://"+addr+"/v1/internal/audit", bytes.NewReader(body))
		if rerr != nil {
			return rerr
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Allsource-Join-Token", e.cfg.JoinToken)
		resp, derr := e.httpc.Do(req)
		if derr != nil {
			err = derr
			if ctx.Err() != nil {
				return err
			}
			continue
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		resp.Body.Close()
		switch {
		case resp.StatusCode/100 == 2:
			return nil
		case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusRequestEntityTooLarge:
			return fmt.Errorf("%w: %s %s", ErrPermanent, resp.Status, msg)
		}
		err = fmt.Errorf("audit to %s: %s %s", addr, resp.Status, msg)
	}
	return err
}

// ---- the edge's own HTTP surface ----

// Middleware wraps next with the decision pipeline (front end 1).
func (e *Edge) Middleware(next http.Handler) http.Handler {
	return Middleware(e.pipeline, e.responder, next)
}

// ForwardAuth is the forward-auth endpoint (front end 3).
func (e *Edge) ForwardAuth() http.Handler {
	return NewForwardAuth(e.pipeline, e.responder, e.cfg.CheckPath)
}

// Handler serves `allsource edge`: /health, /ready, /metrics, the
// forward-auth endpoint, and everything else through the reverse proxy to
// the upstream (front end 2) when one is configured.
func (e *Edge) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", e.serveHealth)
	mux.HandleFunc("GET /ready", e.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{}))
	fa := e.ForwardAuth()
	mux.Handle(e.cfg.CheckPath, fa)
	mux.Handle(e.cfg.CheckPath+"/", fa)
	if e.cfg.Upstream != nil {
		mux.Handle("/", NewProxy(e.pipeline, e.responder, e.cfg.Upstream, e.log))
	} else {
		mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"this edge has no upstream; use ` + e.cfg.CheckPath + ` for forward-auth"}}` + "\n"))
		}))
	}
	return mux
}

// Health is the body of the edge's GET /health.
type Health struct {
	Status           string        `json:"status"` // ok, stale, disconnected, no_view
	NodeID           string        `json:"node_id"`
	Role             string        `json:"role"` // always "edge"
	DevMode          bool          `json:"dev_mode"`
	Version          string        `json:"version,omitempty"`
	ViewIndex        uint64        `json:"view_index"`
	ServerIndex      uint64        `json:"server_index"`
	Lag              uint64        `json:"lag"`
	Staleness        string        `json:"staleness"`
	StalenessSeconds float64       `json:"staleness_seconds"`
	MaxStaleness     string        `json:"max_staleness,omitempty"`
	Replica          ReplicaStatus `json:"replica"`
	View             ViewCounts    `json:"view"`
	Audit            ShipperStats  `json:"audit"`
	Decisions        DecisionStats `json:"decisions"`
	Fleet            FleetStatus   `json:"fleet"`
}

// Health reports the edge's state.
func (e *Edge) Health() Health {
	st := e.replica.Status()
	h := Health{Status: "ok", NodeID: e.cfg.NodeID, Role: "edge", DevMode: e.cfg.DevMode, Version: e.cfg.Version,
		ViewIndex: st.ViewIndex, ServerIndex: st.ServerIndex, Lag: st.Lag, Replica: st,
		Audit: e.shipper.Stats(), Decisions: e.pipeline.Stats(), Fleet: e.fleet.Status()}
	if v := e.pipeline.View(); v != nil {
		h.View = v.Counts()
	}
	if st.Staleness < time.Duration(1<<63-1) {
		h.Staleness = st.Staleness.Round(time.Millisecond).String()
		h.StalenessSeconds = st.Staleness.Seconds()
	} else {
		h.Staleness = "never"
		h.StalenessSeconds = -1
	}
	if e.cfg.MaxStaleness > 0 {
		h.MaxStaleness = e.cfg.MaxStaleness.String()
	}
	switch {
	case e.pipeline.View() == nil:
		h.Status = "no_view"
	case e.cfg.MaxStaleness > 0 && st.Staleness > e.cfg.MaxStaleness:
		h.Status = "stale"
	case !st.Connected:
		h.Status = "disconnected"
	}
	return h
}

func (e *Edge) serveHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(e.Health())
}

// serveReady answers 200 while the edge can decide (a view, fresh enough).
func (e *Edge) serveReady(w http.ResponseWriter, r *http.Request) {
	h := e.Health()
	w.Header().Set("Content-Type", "application/json")
	if h.Status == "no_view" || h.Status == "stale" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": h.Status != "no_view" && h.Status != "stale", "status": h.Status})
}

func (e *Edge) registerMetrics() {
	stat := func(f func(DecisionStats) uint64) func() float64 {
		return func() float64 { return float64(f(e.pipeline.Stats())) }
	}
	decisions := []struct {
		outcome string
		f       func(DecisionStats) uint64
	}{
		{"allowed", func(s DecisionStats) uint64 { return s.Allowed }},
		{"unauthenticated", func(s DecisionStats) uint64 { return s.Unauthenticated }},
		{"forbidden", func(s DecisionStats) uint64 { return s.Forbidden }},
		{"ip_blocked", func(s DecisionStats) uint64 { return s.IPBlocked }},
		{"rate_limited", func(s DecisionStats) uint64 { return s.RateLimited }},
		{"unavailable", func(s DecisionStats) uint64 { return s.Unavailable }},
	}
	for _, d := range decisions {
		e.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "allsource_edge_decisions_total",
			Help: "Edge decisions by outcome.", ConstLabels: prometheus.Labels{"outcome": d.outcome}}, stat(d.f)))
	}
	gauge := func(name, help string, f func() float64) {
		e.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	gauge("allsource_edge_view_index", "Raft index of the edge's enforcement view.", func() float64 { return float64(e.replica.Status().ViewIndex) })
	gauge("allsource_edge_view_lag", "Server index minus view index.", func() float64 { return float64(e.replica.Status().Lag) })
	gauge("allsource_edge_staleness_seconds", "Seconds since a server last confirmed the view (-1: never).", func() float64 {
		s := e.replica.Staleness()
		if s == time.Duration(1<<63-1) {
			return -1
		}
		return s.Seconds()
	})
	gauge("allsource_edge_connected", "1 while a watch stream is open.", func() float64 {
		if e.replica.Status().Connected {
			return 1
		}
		return 0
	})
	gauge("allsource_edge_view_resyncs", "Full view snapshots received.", func() float64 { return float64(e.replica.Status().Resyncs) })
	gauge("allsource_edge_view_resumes", "Streams resumed from the edge's index.", func() float64 { return float64(e.replica.Status().Resumes) })
	gauge("allsource_edge_audit_dropped", "Audit events dropped (spool bound, overflow, refused).", func() float64 { return float64(e.shipper.Stats().Dropped) })
	gauge("allsource_edge_audit_shipped", "Audit events acknowledged by a server.", func() float64 { return float64(e.shipper.Stats().Shipped) })
	gauge("allsource_edge_audit_spool_bytes", "Bytes of audit batches waiting in the spool.", func() float64 { return float64(e.shipper.Stats().SpoolBytes) })
	gauge("allsource_edge_token_cache_entries", "Verified tokens cached.", func() float64 { return float64(e.pipeline.Stats().TokenCacheSize) })
	gauge("allsource_edge_fleet_peers", "Live peer edges reporting demand.", func() float64 { return float64(e.fleet.Status().Peers) })
}
