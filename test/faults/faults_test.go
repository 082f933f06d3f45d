//go:build linux

package faults

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Knobs (environment):
//
//	LONG=1              every scenario longer, more cycles and more load, plus the
//	                    10-minute loaded leader-stability run
//	FAULTS_REPORT=FILE  also write the summary table (markdown) to FILE
//	FAULTS_LOG_DIR=DIR  keep container logs and porcupine visualizations there
//	FAULTS_STABILITY=D  length of the leader-stability run (default 10m)
//	FAULTS_TIMINGS=H,E,L  raft heartbeat, election and lease timeouts for the
//	                    servers (default: the binary's defaults)
//	FAULTS_SCENARIOS=RE only the scenarios whose name (as in the subtest) matches RE

func TestMain(m *testing.M) {
	if environmentProblem() == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		removeLeftovers(ctx)
		cancel()
	}
	code := m.Run()
	removeImage()
	os.Exit(code)
}

func long() bool { return os.Getenv("LONG") != "" && os.Getenv("LONG") != "0" }

func timingsFromEnv(t *testing.T) raftTimings {
	v := os.Getenv("FAULTS_TIMINGS")
	if v == "" {
		return raftTimings{}
	}
	var r raftTimings
	parts := strings.Split(v, ",")
	if len(parts) != 3 {
		t.Fatalf("FAULTS_TIMINGS=%q: want heartbeat,election,lease", v)
	}
	for i, p := range []*time.Duration{&r.Heartbeat, &r.Election, &r.Lease} {
		d, err := time.ParseDuration(strings.TrimSpace(parts[i]))
		if err != nil {
			t.Fatalf("FAULTS_TIMINGS: %v", err)
		}
		*p = d
	}
	return r
}

// scenarios returns the nemesis scenarios of the short or the long tier.
func scenarios() []scenario {
	if !long() {
		load := workload{workers: 5, tenants: 6, objects: 2, think: 5 * time.Millisecond, timeout: 2 * time.Second, probe: 25 * time.Millisecond}
		s := func(name string, n nemesis, fault, heal time.Duration) scenario {
			return scenario{name: name, nemesis: n, cycles: 1, warmup: time.Second, fault: fault, heal: heal, load: load}
		}
		return []scenario{
			s("kill leader", killNemesis{leaderNode}, 3*time.Second, 3*time.Second),
			s("isolate leader", partitionNemesis{tg: leaderNode}, 4*time.Second, 3*time.Second),
			s("pause leader", pauseNemesis{leaderNode}, 3*time.Second, 3*time.Second),
			s("asymmetric leader", partitionNemesis{tg: leaderNode, asymmetric: true}, 4*time.Second, 3*time.Second),
			s("isolate follower", partitionNemesis{tg: followerNode}, 3*time.Second, 2*time.Second),
			s("delay and loss", delayNemesis{delay: 25 * time.Millisecond, jitter: 10 * time.Millisecond, loss: 0.03}, 4*time.Second, 2*time.Second),
			s("restart all", restartAllNemesis{}, 2*time.Second, 4*time.Second),
		}
	}
	load := workload{workers: 8, tenants: 12, objects: 4, think: 2 * time.Millisecond, timeout: 2 * time.Second, probe: 20 * time.Millisecond}
	s := func(name string, n nemesis, cycles int, fault, heal time.Duration) scenario {
		return scenario{name: name, nemesis: n, cycles: cycles, warmup: 2 * time.Second, fault: fault, heal: heal, load: load}
	}
	return []scenario{
		s("kill follower", killNemesis{followerNode}, 5, 6*time.Second, 6*time.Second),
		s("kill leader", killNemesis{leaderNode}, 8, 5*time.Second, 6*time.Second),
		s("isolate follower", partitionNemesis{tg: followerNode}, 5, 8*time.Second, 6*time.Second),
		s("isolate leader", partitionNemesis{tg: leaderNode}, 8, 8*time.Second, 6*time.Second),
		s("asymmetric follower", partitionNemesis{tg: followerNode, asymmetric: true}, 4, 8*time.Second, 6*time.Second),
		s("asymmetric leader", partitionNemesis{tg: leaderNode, asymmetric: true}, 5, 8*time.Second, 6*time.Second),
		s("pause leader", pauseNemesis{leaderNode}, 6, 5*time.Second, 6*time.Second),
		s("pause follower", pauseNemesis{followerNode}, 4, 5*time.Second, 6*time.Second),
		s("delay and loss", delayNemesis{delay: 50 * time.Millisecond, jitter: 25 * time.Millisecond, loss: 0.05}, 3, 15*time.Second, 6*time.Second),
		s("restart all", restartAllNemesis{}, 4, 3*time.Second, 8*time.Second),
	}
}

// TestFaults runs every scenario of the tier against one three-server
// cluster and prints the summary table.
func TestFaults(t *testing.T) {
	requireEnvironment(t)
	start := time.Now()
	timings := timingsFromEnv(t)
	c := startCluster(t, 3, timings)
	t.Logf("cluster of %d servers up in %v (raft timings: %v)", len(c.nodes), time.Since(start).Round(100*time.Millisecond), timings)
	var rows []*result
	var only *regexp.Regexp
	if v := os.Getenv("FAULTS_SCENARIOS"); v != "" {
		only = regexp.MustCompile(v)
	}
	for _, sc := range scenarios() {
		if only != nil && !only.MatchString(shortName(sc.name)) {
			continue
		}
		ok := t.Run(shortName(sc.name), func(t *testing.T) {
			c.t = t
			res := runScenario(t, c, sc)
			rows = append(rows, res)
			judge(t, res)
		})
		c.t = t
		if !ok && !long() {
			// A failed scenario may leave the cluster damaged; the next one
			// starts by waiting for it to be healthy, and fails on its own if not.
			t.Logf("scenario %q failed; continuing with the next", sc.name)
		}
	}
	t.Run("linearizable-read-after-idle-failover", func(t *testing.T) { c.t = t; idleFailoverRead(t, c) })
	c.t = t
	report(t, rows, timings, c.edgesNote, time.Since(start))
}

// idleFailoverRead: after a failover with no write since, a linearizable read
// must still be answered at once. (Regression: the new leader's read-index
// waited for the FSM to apply raft's own no-op and barrier entries, which it
// never sees, so such reads hung until the next write or timed out.)
func idleFailoverRead(t *testing.T, c *cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := c.waitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
	h := newHistory()
	a := newAPIClient(0, c.token, "idle-"+strings.ToLower(randomToken(4)), h, 10*time.Second)
	defer a.close()
	tenant := "idle-read-" + strings.ToLower(randomToken(4))
	l, err := c.leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if o := a.do(l, opCreate, tenant, 0); o.Out != outOK {
		t.Fatalf("create %s: %v", tenant, o)
	}
	if err := c.kill(ctx, l); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.start(ctx, l); err != nil {
			t.Error(err)
		}
		if err := c.waitHealthy(ctx); err != nil {
			t.Error(err)
		}
	}()
	nl, err := c.waitLeader(ctx, c.others(l))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []opKind{opReadRPM, opReadStatus} {
		start := time.Now()
		o := a.do(nl, kind, tenant, 0)
		took := time.Since(start)
		if o.Out != outOK || took > 2*time.Second {
			t.Errorf("linearizable %s on the new leader %s right after failover, no write since: %v after %v (want an answer well within 2s)",
				kind, nl.id, o, took.Round(time.Millisecond))
		} else {
			t.Logf("linearizable %s on the new leader %s right after failover: %v", kind, nl.id, took.Round(time.Millisecond))
		}
	}
}

// judge fails the scenario on any correctness violation, and on availability
// that is far off (the short tier runs beside the rest of `go test ./...` on
// two cores, so failover is only required to happen, and the ≤ 1 s goal is
// judged by the LONG run's table).
func judge(t *testing.T, r *result) {
	t.Helper()
	if !r.ok() {
		t.Errorf("%s: correctness checks failed: lin %d violations (%d undecided), stale %d, lost %d, misplaced %d, audit ok %v, agree %v, isolated-leader acks %d, unexpected errors %d, edge failures %d, revoked accepted %d",
			r.Scenario, r.Lin.Violations, r.Lin.Unknown, r.StaleViolations, r.Lost, r.Misplaced, r.AuditOK, r.Agree,
			r.IsolatedAcks, r.Unexpected, r.EdgeFailures, r.EdgeRevokedAccepted)
	}
	if r.AckedWrites == 0 {
		t.Errorf("%s: no write was acknowledged at all", r.Scenario)
	}
	for i, d := range r.Recovery {
		if d < 0 || d > 15*time.Second {
			t.Errorf("%s: fault %d: writes did not resume within 15s after the leader was lost (%v)", r.Scenario, i+1, d)
		}
	}
	for i, d := range r.StepDown {
		if d < 0 || d > 5*time.Second {
			t.Errorf("%s: fault %d: the cut-off leader kept claiming leadership (step-down %v)", r.Scenario, i+1, d)
		}
	}
	t.Logf("%s: %d ops (%d acked, %d ambiguous), %d writes (%d acked, %d ambiguous committed), lin ok on %d ops, %d stale reads, compared at index %d, failover %s, step-down %s, leaders %v",
		r.Scenario, r.Ops, r.Acked, r.Ambiguous, r.Writes, r.AckedWrites, r.AmbiguousCommitted, r.Lin.Checked, r.StaleReads,
		r.ComparedAt, durations(r.Recovery), durations(r.StepDown), r.Leaders)
}

// TestNemesisLeaderStability (LONG=1) loads a healthy cluster for ten
// minutes and counts leader changes: fast failover must not buy spurious
// elections on a busy two-core machine. Goal: 0.
func TestNemesisLeaderStability(t *testing.T) {
	requireEnvironment(t)
	if !long() {
		t.Skip("the 10-minute leader-stability run is part of make test-faults LONG=1")
	}
	d := 10 * time.Minute
	if v := os.Getenv("FAULTS_STABILITY"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("FAULTS_STABILITY: %v", err)
		}
	}
	timings := timingsFromEnv(t)
	c := startCluster(t, 3, timings)
	sc := scenario{name: fmt.Sprintf("no faults, %v loaded", d), nemesis: noNemesis{}, cycles: 1, warmup: 0, fault: d,
		load: workload{workers: 10, tenants: 24, objects: 4, think: 0, timeout: 2 * time.Second, probe: 50 * time.Millisecond}}
	res := runScenario(t, c, sc)
	judge(t, res)
	rate := float64(res.AckedWrites) / res.Duration.Seconds()
	t.Logf("leader stability: %d leader changes, %d elections in %v under load (%d ops, %.0f acknowledged writes/s); leaders %v",
		res.LeaderChanges, res.Elections, d, res.Ops, rate, res.Leaders)
	if res.LeaderChanges != 0 || res.Elections != 0 {
		t.Errorf("leader stability: %d leader changes and %d elections without any fault (goal 0)", res.LeaderChanges, res.Elections)
	}
	report(t, []*result{res}, timings, c.edgesNote, res.Duration)
}
