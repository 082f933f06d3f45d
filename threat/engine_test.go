package threat

import (
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/allsource/guard/fsm"
)

var t0 = time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)

func TestRecommendBands(t *testing.T) {
	for _, c := range []struct {
		score float64
		want  fsm.ResponseLevel
	}{{0, fsm.LevelMonitor}, {0.299, fsm.LevelMonitor}, {0.3, fsm.LevelAlert}, {0.5, fsm.LevelRequireMFA},
		{0.69, fsm.LevelRequireMFA}, {0.7, fsm.LevelBlock}, {0.89, fsm.LevelBlock}, {0.9, fsm.LevelRevokeAccess}, {1, fsm.LevelRevokeAccess}} {
		if got := Recommend(c.score); got != c.want {
			t.Errorf("Recommend(%v) = %s, want %s", c.score, got, c.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{}
	if err := c.Validate(); err != nil || c.BruteForceFailures != 5 || c.BruteForceWindow != 15*time.Minute ||
		c.VelocityActions != 20 || c.VelocityWindow != 10*time.Second || c.ExfilFactor != 5 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	bad := Config{BusinessStart: 20, BusinessEnd: 8}
	if err := bad.Validate(); err == nil {
		t.Error("business hours 20-8 accepted")
	}
	bad = Config{ExfilFactor: 0.5}
	if err := bad.Validate(); err == nil {
		t.Error("exfiltration factor 0.5 accepted")
	}
}

func TestLRUEvictsLeastRecent(t *testing.T) {
	l := newLRU[int](3)
	var evicted []string
	l.evict = func(k string, _ int) { evicted = append(evicted, k) }
	for i, k := range []string{"a", "b", "c"} {
		l.put(k, i)
	}
	l.get("a") // a is now the most recent; b the least
	l.put("d", 3)
	if _, ok := l.peek("b"); ok || l.len() != 3 || len(evicted) != 1 || evicted[0] != "b" {
		t.Fatalf("after eviction: len %d evicted %v", l.len(), evicted)
	}
	l.put("a", 10)
	if v, _ := l.get("a"); v != 10 {
		t.Errorf("a = %d", v)
	}
	l.delete("c")
	l.put("e", 4)
	l.put("f", 5)
	if l.len() != 3 {
		t.Errorf("len = %d", l.len())
	}
}

// TestEngineStateBounded: a spray from a million addresses against a
// million usernames keeps the engine's state within its configured bounds.
func TestEngineStateBounded(t *testing.T) {
	e, err := NewEngine(Config{MaxActors: 1000, MaxIPs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	n := 200_000
	if testing.Short() {
		n = 20_000
	}
	for i := 0; i < n; i++ {
		e.Process(&fsm.AuditEntry{Tenant: "acme", Seq: uint64(i + 1), Time: t0.Add(time.Duration(i) * time.Millisecond),
			Action: fsm.ActionLoginFailed, Outcome: fsm.OutcomeFailure, IP: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
			Actor: fsm.Actor{Kind: fsm.PrincipalUser, Name: "u" + strconv.Itoa(i)}})
		e.Process(&fsm.AuditEntry{Tenant: "acme", Seq: uint64(i + 1), Time: t0.Add(time.Duration(i) * time.Millisecond),
			Action: "data_read", Actor: fsm.Actor{Kind: fsm.PrincipalAPIKey, ID: strconv.Itoa(i)}})
	}
	s := e.Stats()
	if s.Users > 1000 || s.Sources > 1000 || s.Actors > 1000 || e.cool.len() > 2000 {
		t.Fatalf("state grew past its bounds: %+v cooldowns %d", s, e.cool.len())
	}
	if s.Entries != uint64(2*n) {
		t.Errorf("entries = %d", s.Entries)
	}
}

// TestEngineWarmRaisesNothing: in warm mode the engine learns (the window
// fills) but raises nothing; the next live failure raises at once.
func TestEngineWarmRaisesNothing(t *testing.T) {
	e, _ := NewEngine(Config{})
	fail := func(i int) *fsm.AuditEntry {
		return &fsm.AuditEntry{Tenant: "acme", Seq: uint64(i), Time: t0.Add(time.Duration(i) * time.Second), Action: fsm.ActionLoginFailed,
			Outcome: fsm.OutcomeFailure, IP: "192.0.2.1", Actor: fsm.Actor{Kind: fsm.PrincipalUser, ID: "u1", Name: "ann"}}
	}
	e.SetWarm(true)
	for i := 1; i <= 6; i++ {
		if ds := e.Process(fail(i)); len(ds) != 0 {
			t.Fatalf("warm mode raised %+v", ds)
		}
	}
	e.SetWarm(false)
	ds := e.Process(fail(7))
	if len(ds) != 1 || ds[0].Kind != fsm.AnomalyBruteForce || ds[0].Seq != 7 {
		t.Fatalf("live after warm: %+v", ds)
	}
	if id := ds[0].ID(); len(id) != 32 || id[:16] != "0000000000000007" || id != ds[0].ID() {
		t.Errorf("id = %q", id)
	}
}

// TestEngineRestoresCooldownFromLog: an anomaly_detected entry replayed from
// the log silences the same key; a higher level still gets through.
func TestEngineRestoresCooldownFromLog(t *testing.T) {
	e, _ := NewEngine(Config{})
	e.Process(&fsm.AuditEntry{Tenant: "acme", Seq: 1, Time: t0, Action: fsm.ActionAnomalyDetected,
		Actor: fsm.Actor{Kind: fsm.PrincipalSystem, ID: "threat"}, Metadata: map[string]string{"kind": "brute_force",
			"key": "bf:u:u1", "level": "block"}})
	for i := 2; i <= 8; i++ {
		ds := e.Process(&fsm.AuditEntry{Tenant: "acme", Seq: uint64(i), Time: t0.Add(time.Duration(i) * time.Second), Action: fsm.ActionLoginFailed,
			Outcome: fsm.OutcomeFailure, IP: "192.0.2.1", Actor: fsm.Actor{Kind: fsm.PrincipalUser, ID: "u1", Name: "ann"}})
		if len(ds) != 0 {
			t.Fatalf("raised during a restored cool-down: %+v", ds)
		}
	}
	ds := e.Process(&fsm.AuditEntry{Tenant: "acme", Seq: 9, Time: t0.Add(9 * time.Second), Action: fsm.ActionLoginSucceeded,
		IP: "192.0.2.1", Actor: fsm.Actor{Kind: fsm.PrincipalUser, ID: "u1", Name: "ann", Role: "developer"}})
	if len(ds) != 1 || ds[0].Level != fsm.LevelRevokeAccess || ds[0].Subject.IP != "192.0.2.1" {
		t.Fatalf("success after failures (a higher level) = %+v", ds)
	}
}

func TestPlanHonoursPolicy(t *testing.T) {
	d := Detection{Tenant: "acme", Kind: fsm.AnomalyBruteForce, Score: 0.95, Level: fsm.LevelRevokeAccess, Seq: 3, Key: "k",
		Subject: fsm.Subject{UserID: "0123456789abcdef0123456789abcdef", IP: "203.0.113.4"}}
	pol := fsm.DefaultThreatPolicy("acme")
	if acts := Plan(&d, pol, t0, nil); len(acts) != 3 || acts[1].Kind != fsm.RespEndSessions {
		t.Fatalf("revoke_access plan = %+v", acts)
	}
	pol.MaxLevel = fsm.LevelRequireMFA
	if acts := Plan(&d, pol, t0, nil); len(acts) != 1 || acts[0].Kind != fsm.RespRequireMFA {
		t.Fatalf("capped plan = %+v", acts)
	}
	pol = fsm.DefaultThreatPolicy("acme")
	pol.AutoRespond = false
	if acts := Plan(&d, pol, t0, nil); len(acts) != 0 {
		t.Fatalf("plan without auto response = %+v", acts)
	}
	pol = fsm.DefaultThreatPolicy("acme")
	exempt := []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	for _, a := range Plan(&d, pol, t0, exempt) {
		if a.Kind == fsm.RespBlockIP {
			t.Fatalf("blocked an exempt address: %+v", a)
		}
	}
	d.Tenant = "" // the cluster chain: global blocks only
	acts := Plan(&d, pol, t0, nil)
	if len(acts) != 1 || acts[0].Kind != fsm.RespBlockIP || acts[0].Scope != "global" {
		t.Fatalf("cluster plan = %+v", acts)
	}
	if a, b := Plan(&d, pol, t0, nil)[0].RuleID, acts[0].RuleID; a != b || len(a) != 32 {
		t.Errorf("rule ids %q %q: want stable 32-hex ids", a, b)
	}
}
