package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/allsource/guard/internal/edge"
)

func splitList(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func runEdge(args []string) error {
	var cfg edge.Config
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	fs.StringVar(&cfg.NodeID, "node-id", "", "unique id of this edge (1-64 of a-z 0-9 _ -)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the persisted view and the audit spool")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "", "listen address for the proxy, /v1/check, /health and /metrics (dev default 127.0.0.1:8090)")
	fs.StringVar(&cfg.HTTPAdvertise, "http-advertise", "", "HTTP address announced over gossip (default: -http-addr)")
	fs.StringVar(&cfg.GossipAddr, "gossip-addr", "", "memberlist gossip listen address (fleet-wide rate limits; empty: this edge limits alone)")
	fs.StringVar(&cfg.GossipAdvertise, "gossip-advertise", "", "gossip address peers use (default: -gossip-addr)")
	join := fs.String("join", "", "comma-separated HTTP addresses of servers (any; others are discovered)")
	fs.StringVar(&cfg.Upstream, "upstream", "", "URL of the service to reverse-proxy allowed requests to (empty: forward-auth only)")
	fs.StringVar(&cfg.JoinToken, "join-token", "", "the cluster's join token (required outside dev mode)")
	fs.DurationVar(&cfg.MaxStaleness, "max-staleness", 0, "deny every request (503) after this long without reaching a server (0: never)")
	trusted := fs.String("trusted-proxies", "", "comma-separated CIDRs of proxies whose X-Forwarded-For / X-Real-IP is believed")
	fs.StringVar(&cfg.Routes, "routes", "", "route → permission map: \"[METHOD] PATH=PERMISSION[:CLASS]; …\" or @FILE (default: GET/HEAD → read, others → write)")
	fs.StringVar(&cfg.CheckPath, "check-path", "/v1/check", "forward-auth endpoint (Envoy ext_authz path_prefix)")
	fs.StringVar(&cfg.Issuer, "token-issuer", "allsource-guard", "issuer (iss) access tokens must carry (the servers' -token-issuer)")
	fs.StringVar(&cfg.Audience, "token-audience", "allsource-guard", "audience (aud) access tokens must carry (the servers' -token-audience)")
	cors := fs.String("cors-origins", "", "comma-separated origins allowed by CORS (empty: no CORS headers)")
	fs.StringVar(&cfg.TLS.CertFile, "tls-cert", "", "PEM certificate for mTLS to the servers")
	fs.StringVar(&cfg.TLS.KeyFile, "tls-key", "", "PEM private key for mTLS")
	fs.StringVar(&cfg.TLS.CAFile, "tls-ca", "", "PEM CA that signs the servers' certificates")
	fs.BoolVar(&cfg.Dev, "dev", false, "dev edge: credential-less requests act as dev-user/dev-tenant/admin, no rate limits (loopback only)")
	fs.BoolVar(&cfg.DevForceBind, "dev-force-bind", false, "allow dev mode on a non-loopback address (dangerous)")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "text or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg.Join = splitList(*join)
	cfg.TrustedProxies = splitList(*trusted)
	cfg.CORSOrigins = splitList(*cors)
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
	e, err := edge.Start(cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	return e.Close()
}
