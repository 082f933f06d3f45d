package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/threat"
)

// ThreatConfig configures threat detection, automatic responses, alerts and
// adaptive rate limits (DESIGN.md §7). The zero value runs everything with
// the defaults and no webhook.
type ThreatConfig struct {
	Disabled bool
	Detect   threat.Config
	Adaptive threat.AdaptiveConfig
	// WebhookURL, when set, receives signed anomaly alerts (WebhookSecret,
	// at least 16 bytes, keys the HMAC).
	WebhookURL    string
	WebhookSecret string
	// ExemptIPs are never blocked automatically (load balancers, the
	// servers' own addresses); loopback never is either.
	ExemptIPs []netip.Prefix
	// CheckpointEvery, CheckpointEntries, CheckpointAge: when the analysed
	// watermark is replicated without a detection (threat.RunnerConfig).
	CheckpointEvery   time.Duration
	CheckpointEntries int
	CheckpointAge     time.Duration
}

// validate checks the threat settings before anything starts, with the
// checks startThreat's constructors make: the webhook's URL and secret and
// the detector thresholds.
func (t *ThreatConfig) validate() error {
	if t.Disabled {
		return nil
	}
	if t.WebhookURL != "" {
		if t.WebhookSecret == "" {
			return errors.New("-webhook-secret is required with -webhook-url")
		}
		if _, err := threat.NewWebhook(threat.WebhookConfig{URL: t.WebhookURL, Secret: []byte(t.WebhookSecret)}); err != nil {
			return err
		}
	}
	d := t.Detect // Validate fills defaults in; keep the configured zeros
	return d.Validate()
}

// ParseExemptIPs parses a comma-separated list of addresses and prefixes.
func ParseExemptIPs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("exempt address %q: not an address or prefix", f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// threatParts are the running threat components of a server.
type threatParts struct {
	runner   atomic.Pointer[threat.Runner] // set once built; the FSM hook reads it
	adaptive *threat.AdaptiveRunner
	mfa      *api.MFA
	wg       sync.WaitGroup
}

// mfaField is the KMS context field of sealed TOTP secrets.
const mfaField = "mfa_secret"

// startMFA mounts the MFA endpoints, sealing secrets with the same internal
// KMS key as e-mail addresses (bound to the tenant and the field).
func (p *Server) startMFA() {
	p.threat.mfa = p.api.MountMFA(api.MFAHooks{
		Seal: func(ctx context.Context, tenant string, secret []byte) ([]byte, error) {
			return p.sec.Seal(ctx, secret, tenant, mfaField)
		},
		Open: func(ctx context.Context, tenant string, ct []byte) ([]byte, error) {
			return p.sec.Open(ctx, ct, tenant, mfaField)
		},
		Pepper: func() (*auth.Pepper, error) {
			if pp := p.sec.Pepper(); pp != nil {
				return pp, nil
			}
			return nil, api.ErrNoSecrets
		},
	})
}

// secondFactor is the login's MFA hook (api.IdentityConfig.SecondFactor).
func (p *Server) secondFactor(ctx context.Context, u *fsm.User, totp, recoveryCode string) (uint64, error) {
	if p.threat.mfa == nil {
		return 0, errors.New("MFA is not running")
	}
	return p.threat.mfa.SecondFactor(ctx, u, totp, recoveryCode)
}

// onApply forwards the FSM's changes to the detector runner.
func (t *threatParts) onApply(index uint64, changes []fsm.Change) {
	if r := t.runner.Load(); r != nil {
		r.OnApply(index, changes)
	}
}

// onRestore tells the detector runner the state was replaced by a snapshot.
func (t *threatParts) onRestore(index uint64) {
	if r := t.runner.Load(); r != nil {
		r.OnRestore(index)
	}
}

// wait blocks until the threat goroutines have stopped (after ctx ended).
func (t *threatParts) wait() { t.wg.Wait() }

// startThreat builds the detector runner, the adaptive limiter and the
// webhook, mounts their endpoints, and runs them until ctx ends. Each does
// work only while this server leads.
func (p *Server) startThreat(ctx context.Context, log *slog.Logger) error {
	p.startMFA()
	tc := p.cfg.Threat
	if tc.Disabled {
		return nil
	}
	reg := p.api.Registry()
	var sinks []threat.Sink
	if tc.WebhookURL != "" {
		wh, err := threat.NewWebhook(threat.WebhookConfig{URL: tc.WebhookURL, Secret: []byte(tc.WebhookSecret), Logger: log,
			Registerer: reg})
		if err != nil {
			return err
		}
		sinks = append(sinks, wh)
		p.threat.wg.Add(1)
		go func() { defer p.threat.wg.Done(); wh.Run(ctx) }()
	}
	// Loopback is never blocked: local health checks, sidecars and the
	// servers' own calls come from it.
	exempt := append([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}, tc.ExemptIPs...)
	runner, err := threat.NewRunner(threat.RunnerConfig{Detect: tc.Detect, NodeID: p.cfg.NodeID, FSM: p.fsm, Node: p.node,
		Logger: log, ExemptIPs: exempt, Sinks: sinks, Registerer: reg, CheckpointEvery: tc.CheckpointEvery,
		CheckpointEntries: tc.CheckpointEntries, CheckpointAge: tc.CheckpointAge})
	if err != nil {
		return err
	}
	ad, err := threat.NewAdaptive(tc.Adaptive)
	if err != nil {
		return err
	}
	cpu := &threat.CPUSampler{}
	ar, err := threat.NewAdaptiveRunner(threat.AdaptiveRunnerConfig{Adaptive: ad, NodeID: p.cfg.NodeID, FSM: p.fsm, Node: p.node,
		Logger: log, ServerLoad: func() threat.Load {
			var q int
			if c, a := p.node.CommitIndex(), p.node.AppliedIndex(); c > a {
				q = int(min(c-a, 1<<30))
			}
			return threat.Load{CPU: cpu.Sample(), QueueDepth: q}
		}})
	if err != nil {
		return err
	}
	p.threat.adaptive = ar
	p.threat.runner.Store(runner)
	p.api.MountThreat(api.ThreatHooks{Usage: ar.Report})
	p.threat.wg.Add(2)
	go func() { defer p.threat.wg.Done(); runner.Run(ctx) }()
	go func() { defer p.threat.wg.Done(); ar.Run(ctx) }()
	return nil
}

// Threat is the server's anomaly detector runner (nil when disabled).
func (p *Server) Threat() *threat.Runner { return p.threat.runner.Load() }

// Adaptive is the server's adaptive rate limiter (nil when disabled).
func (p *Server) Adaptive() *threat.AdaptiveRunner { return p.threat.adaptive }
