package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/internal/server"
)

func serverFlags(fs *flag.FlagSet, c *server.Config) *string {
	fs.StringVar(&c.NodeID, "node-id", "", "unique id of this server (1-64 of a-z 0-9 _ -)")
	fs.StringVar(&c.DataDir, "data-dir", "", "directory for the raft log, snapshots and state")
	fs.StringVar(&c.HTTPAddr, "http-addr", "", "HTTP API listen address (dev default 127.0.0.1:8080)")
	fs.StringVar(&c.HTTPAdvertise, "http-advertise", "", "HTTP address other nodes use to reach this one (default: -http-addr)")
	fs.StringVar(&c.RaftAddr, "raft-addr", "", "raft listen address")
	fs.StringVar(&c.RaftAdvertise, "raft-advertise", "", "raft address peers dial (default: -raft-addr)")
	fs.StringVar(&c.GossipAddr, "gossip-addr", "", "memberlist gossip listen address (empty: no gossip)")
	fs.StringVar(&c.GossipAdvertise, "gossip-advertise", "", "gossip address peers use (default: -gossip-addr)")
	fs.BoolVar(&c.Bootstrap, "bootstrap", false, "bootstrap a new cluster with this server as its first voter")
	join := fs.String("join", "", "comma-separated HTTP addresses of existing members to join through")
	fs.StringVar(&c.JoinToken, "join-token", "", "shared secret that admits servers and edges (required outside dev mode)")
	fs.BoolVar(&c.Dev, "dev", false, "single-node dev server: embedded storage, local KMS, auth bypass (loopback only)")
	fs.BoolVar(&c.DevForceBind, "dev-force-bind", false, "allow dev mode on a non-loopback address (dangerous)")
	fs.StringVar(&c.TLS.CertFile, "tls-cert", "", "PEM certificate for mTLS (raft and HTTP)")
	fs.StringVar(&c.TLS.KeyFile, "tls-key", "", "PEM private key for mTLS")
	fs.StringVar(&c.TLS.CAFile, "tls-ca", "", "PEM CA that signs every cluster member's certificate")
	fs.StringVar(&c.OperatorTokenFile, "operator-token-file", "", "write a generated operator token to this file (0600) instead of only printing it")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text or json")
	fs.BoolVar(&c.PublicMetrics, "public-metrics", false, "serve /metrics without a credential")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", 1<<20, "largest accepted request body")
	fs.DurationVar(&c.HeartbeatTimeout, "heartbeat-timeout", cluster.DefaultHeartbeatTimeout, "raft heartbeat timeout")
	fs.DurationVar(&c.ElectionTimeout, "election-timeout", cluster.DefaultElectionTimeout, "raft election timeout")
	fs.DurationVar(&c.LeaderLeaseTimeout, "leader-lease-timeout", cluster.DefaultLeaderLeaseTimeout, "raft leader lease timeout")
	threatFlags(fs, &c.Threat)
	identityFlags(fs, c)
	kmsFlags(fs, c)
	return join
}

// threatFlags are the threat-detection settings (0 or empty: the default).
func threatFlags(fs *flag.FlagSet, t *server.ThreatConfig) {
	fs.BoolVar(&t.Disabled, "threat-disabled", false, "turn off anomaly detection, automatic responses and adaptive rate limits")
	fs.StringVar(&t.WebhookURL, "webhook-url", "", "POST signed anomaly alerts (HMAC-SHA-256, X-Allsource-Signature) to this URL")
	fs.StringVar(&t.WebhookSecret, "webhook-secret", "", "key of the alert signature, at least 16 bytes (use ALLSOURCE_WEBHOOK_SECRET)")
	fs.Func("threat-exempt", "comma-separated addresses or prefixes never blocked automatically (load balancers, servers)", func(v string) error {
		p, err := server.ParseExemptIPs(v)
		t.ExemptIPs = p
		return err
	})
	fs.IntVar(&t.Detect.BruteForceFailures, "brute-force-failures", 0, "failed logins for one user or from one address that are brute force (default 5)")
	fs.DurationVar(&t.Detect.BruteForceWindow, "brute-force-window", 0, "window of -brute-force-failures (default 15m)")
	fs.IntVar(&t.Detect.StuffingUsernames, "stuffing-usernames", 0, "distinct usernames failing from one source that are credential stuffing (default 10)")
	fs.DurationVar(&t.Detect.StuffingWindow, "stuffing-window", 0, "window of -stuffing-usernames (default 6h)")
	fs.IntVar(&t.Detect.VelocityActions, "velocity-actions", 0, "actions by one actor that are too fast (default 20)")
	fs.DurationVar(&t.Detect.VelocityWindow, "velocity-window", 0, "window of -velocity-actions (default 10s)")
	fs.Float64Var(&t.Detect.ExfilFactor, "exfiltration-factor", 0, "read rate over an actor's baseline that is exfiltration (default 5)")
	fs.IntVar(&t.Detect.BaselineEvents, "baseline-events", 0, "events an actor's baseline needs before unusual access is raised (default 50)")
	fs.DurationVar(&t.Detect.BaselineMinSpan, "baseline-min-span", 0, "time an actor's baseline must span (default 72h)")
}

func newLogger(level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func runServer(args []string) error {
	var cfg server.Config
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	join := serverFlags(fs, &cfg)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *join != "" {
		for _, a := range strings.Split(*join, ",") {
			if a = strings.TrimSpace(a); a != "" {
				cfg.Join = append(cfg.Join, a)
			}
		}
	}
	if os.Getenv("ALLSOURCE_DEV_MODE") == "true" {
		cfg.Dev = true
	}
	cfg.Version = version
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := newLogger(cfg.LogLevel, cfg.LogFormat)
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := server.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	return srv.Close()
}
