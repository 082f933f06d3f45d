package threat

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/allsource/guard/fsm"
)

// AdaptiveRunnerConfig configures an AdaptiveRunner.
type AdaptiveRunnerConfig struct {
	Adaptive *Adaptive
	NodeID   string
	FSM      *fsm.FSM
	Node     Node
	Now      func() time.Time
	Logger   *slog.Logger
	// ServerLoad samples this server's own load (CPU, apply queue); nil
	// counts only the edges' reports.
	ServerLoad func() Load
	// Ticks, when set, replaces the Tick ticker (tests drive decisions).
	Ticks <-chan time.Time
}

// AdaptiveRunner runs the adaptive limiter on the leader: every Tick it
// decides and proposes each change as a CmdSetRateLimit with its Reason
// (audited like an operator's change, and streamed to every edge).
type AdaptiveRunner struct {
	cfg AdaptiveRunnerConfig
	log *slog.Logger
}

// NewAdaptiveRunner checks the configuration.
func NewAdaptiveRunner(cfg AdaptiveRunnerConfig) (*AdaptiveRunner, error) {
	if cfg.Adaptive == nil || cfg.FSM == nil || cfg.Node == nil {
		return nil, errors.New("threat: adaptive runner needs the limiter, the FSM and the node")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &AdaptiveRunner{cfg: cfg, log: cfg.Logger.With("component", "adaptive-limits")}, nil
}

// Report takes an edge's usage report (the leader's API calls it).
func (r *AdaptiveRunner) Report(rep UsageReport) error {
	return r.cfg.Adaptive.Report(rep, r.cfg.Now())
}

// Run decides every tick while this server leads, until ctx ends.
func (r *AdaptiveRunner) Run(ctx context.Context) {
	ticks := r.cfg.Ticks
	if ticks == nil {
		t := time.NewTicker(r.cfg.Adaptive.Config().Tick)
		defer t.Stop()
		ticks = t.C
	}
	leading := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticks:
		}
		if !r.cfg.Node.IsLeader() {
			if leading {
				r.cfg.Adaptive.Forget()
				leading = false
			}
			continue
		}
		if !leading {
			r.takeOver()
			leading = true
		}
		if err := r.Tick(ctx); err != nil {
			r.log.Warn("adaptive limits paused", "err", err)
			r.cfg.Adaptive.Forget()
			leading = false
		}
	}
}

// takeOver starts tracking every adaptive tenant whose limit is away from its
// base (so an idle tenant a previous leader raised still decays), warm from
// the replicated baselines.
func (r *AdaptiveRunner) takeOver() {
	r.cfg.Adaptive.Forget()
	_ = r.cfg.FSM.View(func(rd *fsm.Reader) error {
		for _, l := range rd.AdaptiveRateLimits() {
			if l.RequestsPerMinute != l.BaseRequestsPerMinute || l.ObservedRequestsPerMinute > 0 {
				r.cfg.Adaptive.Track(l.Tenant, l.ObservedRequestsPerMinute)
			}
		}
		return nil
	})
}

// Tick runs one decision and proposes its changes.
func (r *AdaptiveRunner) Tick(ctx context.Context) error {
	var load Load
	if r.cfg.ServerLoad != nil {
		load = r.cfg.ServerLoad()
	}
	now := r.cfg.Now()
	var changes []Change
	_ = r.cfg.FSM.View(func(rd *fsm.Reader) error {
		changes = r.cfg.Adaptive.Decide(now, rd.RateLimit, load)
		return nil
	})
	for _, c := range changes {
		cmd, err := fsm.NewCommand(fsm.CmdSetRateLimit, fsm.Header{
			Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: r.cfg.NodeID, Name: "adaptive-limits"},
			Time:      now.UnixNano()}, &c.Cmd)
		if err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := apply(actx, r.cfg.Node, cmd)
		cancel()
		if err != nil {
			return err
		}
		if res.Err != nil {
			r.log.Error("adaptive limit refused", "tenant", c.Cmd.Tenant, "err", res.Err)
			continue
		}
		r.log.Info("adaptive limit changed", "tenant", c.Cmd.Tenant, "from", c.From, "to", c.Cmd.RequestsPerMinute, "reason", c.Cmd.Reason)
	}
	return nil
}
