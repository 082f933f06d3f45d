// Package server wires one AllSource Guard server together — state machine,
// raft node, HTTP API, bootstrap and join — from a validated Config, and shuts
// it down in order. cmd/allsource and the system tests both start servers
// through it, so tests run exactly what the binary runs.
package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/fsm"
)

// Config is every setting of `allsource server`, from flags and env.
type Config struct {
	NodeID             string
	DataDir            string
	HTTPAddr           string
	HTTPAdvertise      string
	RaftAddr           string
	RaftAdvertise      string
	GossipAddr         string
	GossipAdvertise    string
	Bootstrap          bool
	Join               []string
	JoinToken          string
	Dev                bool
	DevForceBind       bool
	TLS                cluster.TLSFiles
	OperatorTokenFile  string
	LogLevel           string
	LogFormat          string
	PublicMetrics      bool
	MaxBodyBytes       int64
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	Version            string
	// OnOperatorToken receives a generated operator token (tests); the token is
	// still printed unless QuietToken is set.
	OnOperatorToken func(string)
	QuietToken      bool
	FastGossip      bool
	// Threat configures anomaly detection, responses and adaptive limits (threat.go).
	Threat ThreatConfig
	// KMSLocalKeyFile is the local KMS root key every server loads (identity.go).
	KMSLocalKeyFile string
	// KMS configures the KMS service's backends and scheduled rotation (kms.go).
	KMS KMSSettings
	// Identity configures passwords, tokens, lockout and the audit batcher (identity.go).
	Identity IdentitySettings
}

// Validate checks the configuration and fills dev-mode defaults.
func (c *Config) Validate() error {
	if c.Dev {
		if c.NodeID == "" {
			c.NodeID = "dev"
		}
		if c.HTTPAddr == "" {
			c.HTTPAddr = "127.0.0.1:8080"
		}
		if c.RaftAddr == "" {
			c.RaftAddr = "127.0.0.1:0"
		}
		if c.DataDir == "" {
			d, err := os.MkdirTemp("", "allsource-dev-*")
			if err != nil {
				return err
			}
			c.DataDir = d
		}
		if len(c.Join) > 0 {
			return errors.New("-dev runs a single-node cluster; it cannot -join")
		}
		c.Bootstrap = true
		for _, a := range []string{c.HTTPAddr, c.RaftAddr, c.GossipAddr} {
			if a != "" && !isLoopback(a) && !c.DevForceBind {
				return fmt.Errorf("dev mode bypasses authentication and refuses to listen on %s (not loopback); use -dev-force-bind to override", a)
			}
		}
	}
	if err := fsm.ValidTenantID(c.NodeID); err != nil {
		return fmt.Errorf("-node-id: %w", err)
	}
	if c.DataDir == "" {
		return errors.New("-data-dir is required")
	}
	for _, a := range []struct{ name, v string }{{"http-addr", c.HTTPAddr}, {"raft-addr", c.RaftAddr}} {
		if a.v == "" {
			return fmt.Errorf("-%s is required", a.name)
		}
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return fmt.Errorf("-%s: %w", a.name, err)
		}
	}
	if c.Bootstrap && len(c.Join) > 0 {
		return errors.New("give either -bootstrap or -join, not both")
	}
	if !c.Dev && c.JoinToken == "" {
		return errors.New("-join-token (or ALLSOURCE_JOIN_TOKEN) is required outside dev mode")
	}
	if c.JoinToken != "" && len(c.JoinToken) < 16 {
		return errors.New("-join-token must be at least 16 characters")
	}
	if t := os.Getenv("ALLSOURCE_BOOTSTRAP_TOKEN"); t != "" && len(t) < 32 {
		return errors.New("ALLSOURCE_BOOTSTRAP_TOKEN must be at least 32 characters")
	}
	if c.TLS.Enabled() {
		if _, _, err := c.TLS.Load(); err != nil {
			return err
		}
	}
	if c.HTTPAdvertise == "" {
		c.HTTPAdvertise = c.HTTPAddr
	}
	if h, _, _ := net.SplitHostPort(c.HTTPAdvertise); h == "" || h == "0.0.0.0" || h == "::" {
		return errors.New("-http-advertise must name a reachable host when -http-addr listens on all interfaces")
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return errors.New("-log-format must be text or json")
	}
	if err := c.Threat.validate(); err != nil {
		return err
	}
	if err := c.Identity.validate(); err != nil {
		return err
	}
	if err := c.KMS.validate(); err != nil {
		return err
	}
	if c.MaxBodyBytes < 1024 {
		return errors.New("-max-body-bytes must be at least 1024")
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

// Server is a running server: its components, in shutdown order.
type Server struct {
	cfg  Config
	log  *slog.Logger
	http *http.Server
	node *cluster.Node
	fsm  *fsm.FSM
	api  *api.Server
	hub  *api.WatchHub // the edges' watch stream, fed by the FSM's OnApply
	stop context.CancelFunc
	done chan struct{}
	ln   net.Listener

	threat threatParts // the detectors, the adaptive limiter and alerts (threat.go)
	sec    *secrets    // unwrapped pepper and signing keys (identity.go)
	kms    kmsParts    // keyring, replicated key store, remote backend (kms.go)
	// kmsStore is set once the KMS starts; the FSM's change feed (which may
	// run before) invalidates its record cache.
	kmsStore atomic.Pointer[api.KMSKeyStore]
}

// Start starts a server from a validated Config. It returns once the HTTP
// listener and raft are up; joining and bootstrapping go on in the background.
func Start(parent context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	ctx, cancel := context.WithCancel(parent)
	p := &Server{cfg: cfg, log: log, stop: cancel, done: make(chan struct{})}
	if cfg.Dev {
		log.Warn("==================================================================")
		log.Warn("DEV MODE: authentication and rate limiting are BYPASSED (dev-user, tenant dev-tenant, role admin).")
		log.Warn("Never run dev mode in production. Audit stays on. Data dir: " + cfg.DataDir)
		log.Warn("==================================================================")
	}
	var serverTLS, clientTLS *tls.Config
	scheme := "http"
	if cfg.TLS.Enabled() {
		var err error
		if serverTLS, clientTLS, err = cfg.TLS.Load(); err != nil {
			cancel()
			return nil, err
		}
		scheme = "https"
	}
	p.hub = api.NewWatchHub(api.WatchHubConfig{JoinToken: cfg.JoinToken, Logger: log})
	p.sec = newSecrets(log)
	f, err := fsm.Open(filepath.Join(cfg.DataDir, "fsm"), fsm.Options{Logger: log,
		OnApply: func(i uint64, ch []fsm.Change) {
			p.hub.OnApply(i, ch)
			p.threat.onApply(i, ch)
			p.sec.onApply(i, ch)
			if ks := p.kmsStore.Load(); ks != nil {
				ks.OnApply(i, ch)
			}
		},
		OnRestore: func(i uint64) {
			p.hub.OnRestore(i)
			p.sec.changed()
			p.threat.onRestore(i)
			if ks := p.kmsStore.Load(); ks != nil {
				ks.OnRestore(i)
			}
		}})
	if err != nil {
		cancel()
		return nil, err
	}
	p.fsm = f
	p.hub.Attach(f)
	httpClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS}}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		f.Close()
		cancel()
		return nil, fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err)
	}
	p.ln = ln
	if cfg.HTTPAdvertise == cfg.HTTPAddr {
		cfg.HTTPAdvertise = ln.Addr().String()
	}
	node, err := cluster.New(cluster.Config{
		NodeID: cfg.NodeID, DataDir: cfg.DataDir, RaftBind: cfg.RaftAddr, RaftAdvertise: cfg.RaftAdvertise,
		HTTPAddr: cfg.HTTPAdvertise, GossipBind: cfg.GossipAddr, GossipAdvertise: cfg.GossipAdvertise,
		Bootstrap: cfg.Bootstrap, JoinToken: cfg.JoinToken, ServerTLS: serverTLS, ClientTLS: clientTLS,
		HeartbeatTimeout: cfg.HeartbeatTimeout, ElectionTimeout: cfg.ElectionTimeout,
		LeaderLeaseTimeout: cfg.LeaderLeaseTimeout, Logger: log, FastGossip: cfg.FastGossip,
		CaughtUp: func(ctx context.Context, id, addr string) (uint64, error) {
			return fetchApplied(ctx, httpClient, scheme, addr)
		},
	}, f)
	if err != nil {
		ln.Close()
		f.Close()
		cancel()
		return nil, err
	}
	p.node = node
	p.api = api.New(api.Config{NodeID: cfg.NodeID, Version: cfg.Version, DevMode: cfg.Dev, JoinToken: cfg.JoinToken,
		MaxBodyBytes: cfg.MaxBodyBytes, ClientTLS: clientTLS, Scheme: scheme, PublicMetrics: cfg.PublicMetrics || cfg.Dev,
		Logger: log}, node, f)
	p.api.MountEdge(p.hub)
	// fail stops what has started, in Close's order (each stop does nothing
	// for a part that did not start), and returns err.
	fail := func(err error) (*Server, error) {
		cancel()
		p.threat.wait()
		p.stopKMS()
		p.api.StopIdentity()
		p.sec.wait()
		node.Shutdown()
		ln.Close()
		f.Close()
		return nil, err
	}
	if err := p.startIdentity(ctx); err != nil {
		return fail(err)
	}
	if err := p.startKMS(ctx, p.sec.prov); err != nil {
		return fail(err)
	}
	if err := p.startThreat(ctx, log); err != nil {
		return fail(err)
	}
	p.http = &http.Server{Handler: p.api.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	p.http.RegisterOnShutdown(p.hub.Close) // end the edges' streams, or Shutdown waits on them
	if serverTLS != nil {
		hc := serverTLS.Clone()
		hc.ClientAuth = tls.VerifyClientCertIfGiven
		p.http.TLSConfig = hc
	}
	go func() {
		var err error
		if serverTLS != nil {
			err = p.http.ServeTLS(ln, "", "")
		} else {
			err = p.http.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	log.Info("server started", "node_id", cfg.NodeID, "http", ln.Addr().String(), "raft", node.RaftAddr(),
		"gossip", cfg.GossipAddr, "data_dir", cfg.DataDir, "version", cfg.Version)
	go func() {
		defer close(p.done)
		if len(cfg.Join) > 0 {
			p.joinLoop(ctx, httpClient, scheme)
		}
		if cfg.Bootstrap {
			p.bootstrapOperator(ctx)
		}
	}()
	return p, nil
}

// fetchApplied asks a server for its applied index (promotion checks).
func fetchApplied(ctx context.Context, c *http.Client, scheme, addr string) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/health", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var h api.Health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return 0, err
	}
	return h.AppliedIndex, nil
}

// joinLoop asks the seeds to admit this server until one does, then joins
// their gossip. It runs on every start: a restarted member's join is a no-op
// for raft but reconnects gossip.
func (p *Server) joinLoop(ctx context.Context, c *http.Client, scheme string) {
	body, _ := json.Marshal(api.JoinRequest{NodeID: p.cfg.NodeID, RaftAddr: p.node.RaftAddr(), HTTPAddr: p.cfg.HTTPAdvertise,
		GossipAddr: p.gossipAddr()})
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		for _, seed := range p.cfg.Join {
			if !strings.Contains(seed, "://") {
				seed = scheme + "://" + seed
			}
			resp, err := p.postJoin(ctx, c, seed, body)
			if err == nil {
				p.log.Info("joined cluster", "via", seed, "leader", resp.Leader)
				if g := p.node.Gossip(); g != nil && len(resp.GossipPeers) > 0 {
					if _, err := g.Join(resp.GossipPeers); err != nil {
						p.log.Warn("gossip join failed; will rely on raft", "err", err)
					}
				}
				return
			}
			if attempt == 1 || attempt%10 == 0 {
				p.log.Warn("join attempt failed; retrying", "seed", seed, "attempt", attempt, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

func (p *Server) gossipAddr() string {
	if g := p.node.Gossip(); g != nil {
		return g.Addr()
	}
	return ""
}

func (p *Server) postJoin(ctx context.Context, c *http.Client, seed string, body []byte) (*api.JoinResponse, error) {
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, seed+"/v1/cluster/join", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Allsource-Join-Token", p.cfg.JoinToken)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, fmt.Errorf("%s: %s %s", resp.Status, e.Error.Code, e.Error.Message)
	}
	var jr api.JoinResponse
	if err := json.NewDecoder(resp.Body).Decode(&jr); err != nil {
		return nil, err
	}
	return &jr, nil
}

// bootstrapOperator installs the first operator credential of a new cluster and
// prints it once. It runs on the bootstrap server; it does nothing when the
// cluster already has an operator (a restart, or a restored snapshot).
func (p *Server) bootstrapOperator(ctx context.Context) {
	for {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := p.node.WaitForLeader(wctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil && p.node.IsLeader() {
			break
		}
		if err == nil {
			return // another server leads; it was not bootstrapped by us
		}
	}
	if err := p.node.Barrier(ctx); err != nil {
		p.log.Warn("bootstrap barrier failed", "err", err)
	}
	var has bool
	_ = p.fsm.View(func(r *fsm.Reader) error { _, has = r.Operator(); return nil })
	if has {
		return
	}
	tok := os.Getenv("ALLSOURCE_BOOTSTRAP_TOKEN")
	generated := tok == ""
	if generated {
		tok = newOperatorToken()
	}
	sys := fsm.Principal{Kind: fsm.PrincipalSystem, ID: p.cfg.NodeID, Name: "bootstrap"}
	c, _ := fsm.NewCommand(fsm.CmdBootstrapOperator, fsm.Header{Principal: sys, Time: time.Now().UnixNano()},
		&fsm.BootstrapOperatorCmd{Token: fsm.OperatorToken{ID: "root", Hash: api.HashOperatorToken(tok)}})
	res, err := p.node.Apply(ctx, c)
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		p.log.Error("could not install the operator credential", "err", err)
		return
	}
	if p.cfg.Dev {
		p.createDevTenant(ctx, sys)
	}
	if generated {
		if p.cfg.OnOperatorToken != nil {
			p.cfg.OnOperatorToken(tok)
		}
		if p.cfg.OperatorTokenFile != "" {
			if err := os.WriteFile(p.cfg.OperatorTokenFile, []byte(tok+"\n"), 0o600); err != nil {
				p.log.Error("could not write the operator token file", "err", err)
			}
		}
		if p.cfg.QuietToken {
			return
		}
		fmt.Fprintf(os.Stderr, "\n"+
			"================================================================================\n"+
			"  New cluster. Operator token (shown once; store it in a secret manager):\n\n"+
			"      %s\n\n"+
			"  Use it as:  export ALLSOURCE_TOKEN=%s\n"+
			"================================================================================\n\n", tok, tok)
	} else {
		p.log.Info("operator credential installed from ALLSOURCE_BOOTSTRAP_TOKEN")
	}
}

func (p *Server) createDevTenant(ctx context.Context, sys fsm.Principal) {
	c, _ := fsm.NewCommand(fsm.CmdCreateTenant, fsm.Header{Principal: sys, Time: time.Now().UnixNano()},
		&fsm.CreateTenantCmd{ID: "dev-tenant", Name: "Dev tenant", Tier: "dev"})
	if res, err := p.node.Apply(ctx, c); err != nil || (res.Err != nil && res.Err.Code != fsm.CodeConflict) {
		p.log.Warn("could not create dev-tenant", "err", err)
	}
}

const tokenAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// newOperatorToken returns "aso_" and 43 random base62 characters (~256 bits).
func newOperatorToken() string {
	b := make([]byte, 43)
	max := big.NewInt(int64(len(tokenAlphabet)))
	for i := range b {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic(err)
		}
		b[i] = tokenAlphabet[n.Int64()]
	}
	return "aso_" + string(b)
}

// Close shuts the server down in order: stop taking requests, leave gossip
// and stop raft, close the state file.
func (p *Server) Close() error {
	p.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = p.http.Shutdown(ctx)
	<-p.done
	p.threat.wait()
	p.stopKMS()
	p.api.StopIdentity() // flush buffered audit while raft still runs
	p.sec.wait()
	err := p.node.Shutdown()
	if cerr := p.fsm.Close(); err == nil {
		err = cerr
	}
	return err
}

// Node is the server's raft node.
func (p *Server) Node() *cluster.Node { return p.node }

// FSM is the server's state machine.
func (p *Server) FSM() *fsm.FSM { return p.fsm }

// Watch is the hub of the edges' watch stream.
func (p *Server) Watch() *api.WatchHub { return p.hub }

// API is the server's HTTP API.
func (p *Server) API() *api.Server { return p.api }

// HTTPAddr is the address the HTTP API listens on.
func (p *Server) HTTPAddr() string { return p.ln.Addr().String() }

// Config returns the configuration the server runs with.
func (p *Server) Config() Config { return p.cfg }
