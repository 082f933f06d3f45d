// Package edge wires one AllSource Guard edge together — gossip, the
// enforcement edge (replica, pipeline, proxy, forward-auth, fleet limits,
// audit shipping) and its HTTP listener — from a validated Config, and shuts
// it down in order. cmd/allsource and the system tests both start edges
// through it, so tests run exactly what the binary runs.
package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"time"

	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/enforcement"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/threat"
)

// Config is every setting of `allsource edge`, from flags and env.
type Config struct {
	NodeID          string
	DataDir         string
	HTTPAddr        string
	HTTPAdvertise   string
	GossipAddr      string
	GossipAdvertise string
	Join            []string // server HTTP addresses
	Upstream        string
	JoinToken       string
	MaxStaleness    time.Duration
	TrustedProxies  []string
	Routes          string // enforcement.ParseRouteMap syntax, or @file
	CheckPath       string
	Issuer          string
	Audience        string
	CORSOrigins     []string
	TLS             cluster.TLSFiles
	Dev             bool
	DevForceBind    bool
	LogLevel        string
	LogFormat       string
	Version         string
	FastGossip      bool
	// Fleet and AuditFlushInterval tune fleet limits and audit shipping
	// (tests shorten them).
	Fleet              enforcement.FleetConfig
	AuditFlushInterval time.Duration
	AuditSpoolBytes    int64
	// UsageInterval is how often usage is reported to the servers' adaptive
	// limiter (default 5 s).
	UsageInterval time.Duration
	// Clock, for tests; nil is the system clock.
	Clock enforcement.Clock

	upstream *url.URL
	trusted  []netip.Prefix
	routes   *enforcement.RouteMap
}

// Validate checks the configuration and fills dev-mode defaults.
func (c *Config) Validate() error {
	if c.Dev {
		if c.NodeID == "" {
			c.NodeID = "dev-edge"
		}
		if c.HTTPAddr == "" {
			c.HTTPAddr = "127.0.0.1:8090"
		}
		if len(c.Join) == 0 {
			c.Join = []string{"127.0.0.1:8080"}
		}
		for _, a := range []string{c.HTTPAddr, c.GossipAddr} {
			if a != "" && !isLoopback(a) && !c.DevForceBind {
				return fmt.Errorf("dev mode bypasses authentication and refuses to listen on %s (not loopback); use -dev-force-bind to override", a)
			}
		}
	}
	if err := fsm.ValidTenantID(c.NodeID); err != nil {
		return fmt.Errorf("-node-id: %w", err)
	}
	if c.HTTPAddr == "" {
		return errors.New("-http-addr is required")
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return fmt.Errorf("-http-addr: %w", err)
	}
	if c.GossipAddr != "" {
		if _, _, err := net.SplitHostPort(c.GossipAddr); err != nil {
			return fmt.Errorf("-gossip-addr: %w", err)
		}
	}
	if len(c.Join) == 0 {
		return errors.New("-join needs the HTTP address of at least one server")
	}
	if !c.Dev && c.JoinToken == "" {
		return errors.New("-join-token (or ALLSOURCE_JOIN_TOKEN) is required outside dev mode")
	}
	if c.JoinToken != "" && len(c.JoinToken) < 16 {
		return errors.New("-join-token must be at least 16 characters")
	}
	if c.DataDir == "" && !c.Dev {
		return errors.New("-data-dir is required (the view and the audit spool persist there)")
	}
	if c.MaxStaleness < 0 {
		return errors.New("-max-staleness must not be negative")
	}
	if c.Upstream != "" {
		u, err := enforcement.ParseUpstream(c.Upstream)
		if err != nil {
			return fmt.Errorf("-upstream: %w", err)
		}
		c.upstream = u
	}
	var err error
	if c.trusted, err = enforcement.ParseTrustedProxies(c.TrustedProxies); err != nil {
		return fmt.Errorf("-trusted-proxies: %w", err)
	}
	spec := c.Routes
	if len(spec) > 1 && spec[0] == '@' {
		b, err := os.ReadFile(spec[1:])
		if err != nil {
			return fmt.Errorf("-routes: %w", err)
		}
		spec = string(b)
	}
	if c.routes, err = enforcement.ParseRouteMap(spec); err != nil {
		return fmt.Errorf("-routes: %w", err)
	}
	if c.TLS.Enabled() {
		if _, _, err := c.TLS.Load(); err != nil {
			return err
		}
	}
	if c.HTTPAdvertise == "" {
		c.HTTPAdvertise = c.HTTPAddr
	}
	switch c.LogFormat {
	case "", "text", "json":
	default:
		return errors.New("-log-format must be text or json")
	}
	return nil
}

func isLoopback(addr string) bool {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Edge is a running edge.
type Edge struct {
	cfg    Config
	log    *slog.Logger
	edge   *enforcement.Edge
	gossip *cluster.Gossip
	http   *http.Server
	ln     net.Listener

	stopUsage context.CancelFunc
	usageDone chan struct{}
}

// Start starts an edge from a validated Config: it loads the persisted view
// (and enforces from it at once), listens, joins gossip and connects to the
// servers in the background.
func Start(cfg Config, log *slog.Logger) (*Edge, error) {
	if cfg.Dev {
		log.Warn("==================================================================")
		log.Warn("DEV MODE EDGE: requests without a credential act as dev-user of dev-tenant with role admin,")
		log.Warn("and rate limiting is BYPASSED. Never run dev mode in production. Audit stays on.")
		log.Warn("==================================================================")
	}
	var clientTLS *tls.Config
	scheme := "http"
	if cfg.TLS.Enabled() {
		var err error
		if _, clientTLS, err = cfg.TLS.Load(); err != nil {
			return nil, err
		}
		scheme = "https"
	}
	var cors *enforcement.CORSConfig
	if len(cfg.CORSOrigins) > 0 {
		cors = &enforcement.CORSConfig{AllowedOrigins: cfg.CORSOrigins,
			AllowedHeaders: []string{"authorization", "content-type", "x-api-key", "x-request-id"},
			AllowedMethods: []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"},
			ExposedHeaders: []string{"X-Request-Id", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After"}}
	}
	e, err := enforcement.New(enforcement.Config{NodeID: cfg.NodeID, DataDir: cfg.DataDir, JoinToken: cfg.JoinToken,
		Servers: cfg.Join, Scheme: scheme, ClientTLS: clientTLS, Upstream: cfg.upstream, CheckPath: cfg.CheckPath,
		MaxStaleness: cfg.MaxStaleness, TrustedProxies: cfg.trusted, Routes: cfg.routes, Issuer: cfg.Issuer,
		Audience: cfg.Audience, DevMode: cfg.Dev, CORS: cors, Fleet: cfg.Fleet, AuditFlushInterval: cfg.AuditFlushInterval,
		AuditSpoolBytes: cfg.AuditSpoolBytes, Clock: cfg.Clock, Logger: log, Version: cfg.Version})
	if err != nil {
		return nil, err
	}
	// Usage reports for the servers' adaptive rate limits (DESIGN.md §7), built
	// before anything that would need undoing if it failed.
	cpu := &threat.CPUSampler{}
	rep, err := threat.NewUsageReporter(threat.UsageReporterConfig{Edge: cfg.NodeID, Meter: threat.NewUsageMeter(e.Counts()), Servers: e.ServerURLs,
		JoinToken: cfg.JoinToken, Interval: cfg.UsageInterval, Client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS}},
		Load: func() threat.Load { return threat.Load{CPU: cpu.Sample()} }, Logger: log})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	p := &Edge{cfg: cfg, log: log, edge: e, ln: ln}
	if cfg.HTTPAdvertise == cfg.HTTPAddr {
		cfg.HTTPAdvertise = ln.Addr().String()
	}
	if cfg.GossipAddr != "" {
		g, err := cluster.NewGossip(cluster.GossipConfig{Name: cfg.NodeID, Bind: cfg.GossipAddr, Advertise: cfg.GossipAdvertise,
			JoinToken: cfg.JoinToken, Logger: log, Fast: cfg.FastGossip, OnMessage: e.OnGossipMessage,
			Meta: cluster.NodeMeta{Role: "edge", HTTPAddr: cfg.HTTPAdvertise}})
		if err != nil {
			ln.Close()
			return nil, err
		}
		p.gossip = g
		e.SetMembership(membership{g}, func(addrs []string) error { _, err := g.Join(addrs); return err })
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stopUsage = cancel
	p.usageDone = make(chan struct{})
	go func() { defer close(p.usageDone); rep.Run(ctx) }()
	p.http = &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		if err := p.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("edge http server stopped", "err", err)
		}
	}()
	e.Start()
	log.Info("edge started", "node_id", cfg.NodeID, "http", ln.Addr().String(), "gossip", cfg.GossipAddr,
		"join", cfg.Join, "upstream", cfg.Upstream, "data_dir", cfg.DataDir, "max_staleness", cfg.MaxStaleness,
		"version", cfg.Version)
	return p, nil
}

// membership adapts cluster.Gossip to enforcement.Membership.
type membership struct{ g *cluster.Gossip }

func (m membership) Members() []enforcement.Member {
	ms := m.g.Members()
	out := make([]enforcement.Member, 0, len(ms))
	for _, x := range ms {
		out = append(out, enforcement.Member{Name: x.Name, Role: x.Meta.Role, HTTPAddr: x.Meta.HTTPAddr})
	}
	return out
}

func (m membership) SendTo(name string, msg []byte) error { return m.g.SendTo(name, msg) }

// Close shuts the edge down in order: stop taking requests, leave gossip,
// stop the replica and ship or spool pending audit.
func (p *Edge) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.http.Shutdown(ctx)
	if p.gossip != nil {
		_ = p.gossip.Leave(time.Second)
	}
	if p.stopUsage != nil {
		p.stopUsage()
		<-p.usageDone
	}
	if cerr := p.edge.Close(); err == nil {
		err = cerr
	}
	return err
}

// Edge is the enforcement edge.
func (p *Edge) Edge() *enforcement.Edge { return p.edge }

// HTTPAddr is the address the edge listens on.
func (p *Edge) HTTPAddr() string { return p.ln.Addr().String() }

// Gossip is the edge's gossip membership (nil without -gossip-addr).
func (p *Edge) Gossip() *cluster.Gossip { return p.gossip }
