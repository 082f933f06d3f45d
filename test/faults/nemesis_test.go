//go:build linux

package faults

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// fault is one injected fault: what, on whom, when (history time), and what
// was measured about it.
type fault struct {
	kind       string
	victims    []string
	at, healed int64
	// leaderLoss: the fault took the leader away (kill, isolate, pause,
	// whole-cluster restart); the time to the first acknowledged write after
	// it is the failover time.
	leaderLoss bool
	// at is taken just before the fault is injected (docker and nsenter take
	// tens of milliseconds).
	//
	// fromHeal: measure the failover from the heal (the restart), not from
	// the injection (whole-cluster restarts: nothing can answer while down).
	fromHeal                  bool
	recoverFrom, invokedAfter int64
	oldLeader                 string
	// inPlace: when the fault was complete (the command returned, every
	// rule in place). Failover is the time from at to the first write invoked
	// after inPlace that is acknowledged — an upper bound, as the fault took
	// effect somewhere in [at, inPlace]; writes a cut-off old leader
	// acknowledges after inPlace are violations.
	inPlace int64
	// stepDown: how long the isolated old leader kept claiming leadership
	// (isolation nemeses only; -1 if it never stopped while isolated).
	stepDown time.Duration
}

// nemesis injects one kind of fault.
type nemesis interface {
	name() string
	// inject starts one fault and returns its record and how to heal it.
	inject(ctx context.Context, r *run) (*fault, func(context.Context) error, error)
}

// target says whom a nemesis picks.
type target int

const (
	leaderNode target = iota
	followerNode
)

func (tg target) String() string { return [...]string{"leader", "follower"}[tg] }

func (r *run) pick(ctx context.Context, tg target) (*node, error) {
	l, err := r.c.leader(ctx)
	if err != nil {
		return nil, fmt.Errorf("no leader to pick from: %w", err)
	}
	if tg == leaderNode {
		return l, nil
	}
	others := r.c.others(l)
	return others[r.rnd.IntN(len(others))], nil
}

func ids(ns []*node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.id)
	}
	return out
}

// ---- process faults ----

// killNemesis kill -9s a node and restarts it from its data when healed.
type killNemesis struct{ tg target }

func (k killNemesis) name() string { return "kill -9 " + k.tg.String() }

func (k killNemesis) inject(ctx context.Context, r *run) (*fault, func(context.Context) error, error) {
	n, err := r.pick(ctx, k.tg)
	if err != nil {
		return nil, nil, err
	}
	r.setFaulted(n.id, true)
	at := r.hist.now() // before the command: failover is measured conservatively
	if err := r.c.kill(ctx, n); err != nil {
		return nil, nil, err
	}
	f := &fault{kind: k.name(), victims: []string{n.id}, at: at, inPlace: r.hist.now(), leaderLoss: k.tg == leaderNode, oldLeader: n.id}
	return f, func(ctx context.Context) error {
		defer r.setFaulted(n.id, false)
		return r.c.start(ctx, n)
	}, nil
}

// pauseNemesis freezes a node (SIGSTOP-like, via the cgroup freezer) and
// thaws it when healed: the old leader wakes up believing it still leads.
type pauseNemesis struct{ tg target }

func (p pauseNemesis) name() string { return "pause " + p.tg.String() }

func (p pauseNemesis) inject(ctx context.Context, r *run) (*fault, func(context.Context) error, error) {
	n, err := r.pick(ctx, p.tg)
	if err != nil {
		return nil, nil, err
	}
	r.setFaulted(n.id, true)
	at := r.hist.now()
	if err := r.c.pause(ctx, n); err != nil {
		return nil, nil, err
	}
	f := &fault{kind: p.name(), victims: []string{n.id}, at: at, inPlace: r.hist.now(), leaderLoss: p.tg == leaderNode, oldLeader: n.id}
	return f, func(ctx context.Context) error {
		defer r.setFaulted(n.id, false)
		return r.c.unpause(ctx, n)
	}, nil
}

// restartAllNemesis kill -9s every server at once and restarts them all.
type restartAllNemesis struct{}

func (restartAllNemesis) name() string { return "kill -9 all, restart" }

func (ra restartAllNemesis) inject(ctx context.Context, r *run) (*fault, func(context.Context) error, error) {
	l, _ := r.c.leader(ctx)
	at := r.hist.now()
	var wg sync.WaitGroup
	errs := make([]error, len(r.c.nodes))
	for i, n := range r.c.nodes {
		r.setFaulted(n.id, true)
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = r.c.kill(ctx, n) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	f := &fault{kind: ra.name(), victims: ids(r.c.nodes), at: at, inPlace: r.hist.now(), leaderLoss: true, fromHeal: true}
	if l != nil {
		f.oldLeader = l.id
	}
	return f, func(ctx context.Context) error {
		errs := make([]error, len(r.c.nodes))
		var wg sync.WaitGroup
		for i, n := range r.c.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = r.c.start(ctx, n) }()
		}
		wg.Wait()
		for _, n := range r.c.nodes {
			r.setFaulted(n.id, false)
		}
		return errors.Join(errs...)
	}, nil
}

// ---- network faults (iptables inside the containers' namespaces) ----

func (c *cluster) iptables(ctx context.Context, n *node, args ...string) error {
	pid, err := c.containerPID(ctx, n)
	if err != nil {
		return err
	}
	return nsenterRun(ctx, pid, append([]string{"iptables", "-w", "5"}, args...)...)
}

// dropFrom makes n drop every packet from the given peers (one direction).
func (c *cluster) dropFrom(ctx context.Context, n *node, from ...*node) error {
	for _, f := range from {
		if err := c.iptables(ctx, n, "-I", "INPUT", "-s", f.ip.String(), "-j", "DROP"); err != nil {
			return err
		}
	}
	return nil
}

// healNetwork removes every rule this suite installed in n's namespace.
func (c *cluster) healNetwork(ctx context.Context, n *node) error {
	if err := c.iptables(ctx, n, "-F", "INPUT"); err != nil {
		return err
	}
	return c.iptables(ctx, n, "-F", "OUTPUT")
}

func (c *cluster) healAllNetworks(ctx context.Context) error {
	var errs []error
	for _, n := range c.nodes {
		if err := c.healNetwork(ctx, n); err != nil && !strings.Contains(err.Error(), "is not running") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// partitionNemesis cuts a node off from its peers — both directions
// (symmetric), or only what it receives (asymmetric: it still talks, nobody
// is heard). The test process (on the network's gateway) still reaches every
// node, so clients see what an isolated node answers.
type partitionNemesis struct {
	tg         target
	asymmetric bool
}

func (p partitionNemesis) name() string {
	if p.asymmetric {
		return "asymmetric partition: " + p.tg.String() + " hears nobody"
	}
	return "isolate " + p.tg.String()
}

func (p partitionNemesis) inject(ctx context.Context, r *run) (*fault, func(context.Context) error, error) {
	n, err := r.pick(ctx, p.tg)
	if err != nil {
		return nil, nil, err
	}
	others := r.c.others(n)
	heal := func(ctx context.Context) error { return r.c.healAllNetworks(ctx) }
	at := r.hist.now()
	if err := r.c.dropFrom(ctx, n, others...); err != nil {
		_ = heal(ctx)
		return nil, nil, err
	}
	if !p.asymmetric {
		for _, o := range others {
			if err := r.c.dropFrom(ctx, o, n); err != nil {
				_ = heal(ctx)
				return nil, nil, err
			}
		}
	}
	f := &fault{kind: p.name(), victims: []string{n.id}, at: at, inPlace: r.hist.now(), leaderLoss: p.tg == leaderNode}
	if p.tg == leaderNode {
		f.oldLeader, f.stepDown = n.id, -1
		// How long does the cut-off leader keep claiming leadership? It must
		// step down once its lease runs out without a quorum's contact.
		start := time.Now()
		if poll(ctx, 10*time.Second, 10*time.Millisecond, func() (bool, error) {
			h, err := r.c.health(ctx, n)
			return err == nil && h.Role != "leader", err
		}) == nil {
			f.stepDown = time.Since(start)
		}
	}
	return f, heal, nil
}

// delayNemesis delays every packet a node sends by delay±jitter and drops a
// fraction of them, on every node (NFQUEUE; see nfqueue_test.go).
type delayNemesis struct {
	delay, jitter time.Duration
	loss          float64
}

func (d delayNemesis) name() string {
	return fmt.Sprintf("delay %v±%v, loss %.0f%%", d.delay, d.jitter, d.loss*100)
}

func (d delayNemesis) inject(ctx context.Context, r *run) (*fault, func(context.Context) error, error) {
	type held struct {
		n    *node
		rule []string
		d    *delayer
	}
	var all []held
	heal := func(ctx context.Context) error {
		var errs []error
		for _, h := range all {
			if err := r.c.iptables(ctx, h.n, append([]string{"-D"}, h.rule...)...); err != nil {
				errs = append(errs, err)
			}
			h.d.close(ctx)
		}
		return errors.Join(errs...)
	}
	for i, n := range r.c.nodes {
		pid, err := r.c.containerPID(ctx, n)
		if err != nil {
			_ = heal(ctx)
			return nil, nil, err
		}
		q := uint16(1000 + i)
		dl, err := newDelayer(pid, q, d.delay, d.jitter, d.loss)
		if err != nil {
			_ = heal(ctx)
			return nil, nil, fmt.Errorf("NFQUEUE delayer for %s: %w", n.id, err)
		}
		rule := []string{"OUTPUT", "-o", "eth0", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(q)), "--queue-bypass"}
		if err := r.c.iptables(ctx, n, append([]string{"-I"}, rule...)...); err != nil {
			dl.close(ctx)
			_ = heal(ctx)
			return nil, nil, err
		}
		all = append(all, held{n, rule, dl})
	}
	now := r.hist.now()
	f := &fault{kind: d.name(), victims: ids(r.c.nodes), at: now, inPlace: now}
	return f, heal, nil
}

// noNemesis injects nothing: the leader-stability run.
type noNemesis struct{}

func (noNemesis) name() string { return "none (load only)" }

func (noNemesis) inject(ctx context.Context, r *run) (*fault, func(context.Context) error, error) {
	return nil, func(context.Context) error { return nil }, nil
}
