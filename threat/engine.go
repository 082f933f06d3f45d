package threat

import (
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/allsource/guard/fsm"
)

// Detection is one anomaly found in the audit stream.
type Detection struct {
	Tenant  string
	Kind    fsm.AnomalyKind
	Score   float64
	Level   fsm.ResponseLevel
	Factors []fsm.Factor
	Subject fsm.Subject
	Actor   fsm.Actor
	Summary string
	// Seq and Time are the triggering entry's.
	Seq  uint64
	Time time.Time
	// Key identifies what the detection is about (kind-specific); the same key
	// is not raised again within the cool-down unless the level rises.
	Key string
}

// ID is the anomaly id: the triggering entry's sequence number and a hash of
// the key, so re-analysing the same entry (a new leader) gives the same id.
func (d *Detection) ID() string {
	h := fnv.New64a()
	h.Write([]byte(d.Kind))
	h.Write([]byte{0})
	h.Write([]byte(d.Key))
	return fmt.Sprintf("%016x%016x", d.Seq, h.Sum64())
}

// Recommend maps a score to a level: [0, 0.3) monitor, [0.3, 0.5) alert,
// [0.5, 0.7) require_mfa, [0.7, 0.9) block, [0.9, 1] revoke_access.
func Recommend(score float64) fsm.ResponseLevel {
	switch {
	case score >= 0.9:
		return fsm.LevelRevokeAccess
	case score >= 0.7:
		return fsm.LevelBlock
	case score >= 0.5:
		return fsm.LevelRequireMFA
	case score >= 0.3:
		return fsm.LevelAlert
	}
	return fsm.LevelMonitor
}

func clamp01(v float64) float64 { return math.Max(0, math.Min(1, v)) }

// round3 keeps scores readable and stable across platforms.
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// Stats counts what an engine has seen.
type Stats struct {
	Entries    uint64
	Detections map[fsm.AnomalyKind]uint64
	Actors     int
	Sources    int
	Users      int
}

// Engine runs every detector over audit entries in log order. It is not safe
// for concurrent use: one goroutine (the leader's runner, or a replay) feeds
// it. Its memory is bounded by Config.MaxActors and Config.MaxIPs.
//
// A string the engine keeps beyond Process (in a window, as a map key, among
// an actor's addresses or actions) is its own copy (strings.Clone): the
// entries the FSM hands over share their raft batch's text, so a kept
// substring would keep the whole batch alive (hundreds of KB for an 11-byte
// address). Map keys count too: assigning to a key stores the key anew.
// TestDetectorsKeepNoBatchText walks the state to check.
type Engine struct {
	cfg     Config
	users   *lru[*userWin]    // brute force per target user
	sources *lru[*sourceWin]  // brute force and stuffing per IP or API key
	actors  *lru[*actorState] // baselines, velocity, exfiltration, escalation
	cool    *lru[cooldown]
	reads   map[fsm.Action]bool
	warm    bool
	entries uint64
	counts  map[fsm.AnomalyKind]uint64
	out     []Detection
}

type cooldown struct {
	until time.Time
	rank  int
}

// NewEngine returns an engine; cfg is validated (and defaults filled).
func NewEngine(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, users: newLRU[*userWin](cfg.MaxIPs), sources: newLRU[*sourceWin](cfg.MaxIPs),
		actors: newLRU[*actorState](cfg.MaxActors), cool: newLRU[cooldown](cfg.MaxActors + cfg.MaxIPs),
		reads: map[fsm.Action]bool{}, counts: map[fsm.AnomalyKind]uint64{}}
	for _, a := range cfg.ReadActions {
		e.reads[fsm.Action(a)] = true
	}
	return e, nil
}

// Config returns the engine's configuration (defaults filled).
func (e *Engine) Config() Config { return e.cfg }

// SetWarm switches warm mode: the engine learns from entries but raises
// nothing (a new leader replaying entries already analysed by its
// predecessor).
func (e *Engine) SetWarm(on bool) { e.warm = on }

// Stats returns counters and state sizes.
func (e *Engine) Stats() Stats {
	s := Stats{Entries: e.entries, Detections: map[fsm.AnomalyKind]uint64{}, Actors: e.actors.len(),
		Sources: e.sources.len(), Users: e.users.len()}
	for k, v := range e.counts {
		s.Detections[k] = v
	}
	return s
}

// Suppress records that key (in tenant) was raised at level until t: a
// recorded anomaly restores its cool-down on a new leader.
func (e *Engine) Suppress(tenant, key string, level fsm.ResponseLevel, until time.Time) {
	k := tenant + "\x00" + key
	if c, ok := e.cool.peek(k); ok && c.until.After(until) && c.rank >= level.Rank() {
		return
	}
	e.cool.put(k, cooldown{until: until, rank: level.Rank()})
}

// Process analyses one entry and returns the detections it raises (the
// slice is reused by the next call).
func (e *Engine) Process(ent *fsm.AuditEntry) []Detection {
	e.out = e.out[:0]
	e.entries++
	if ent.Actor.Kind == fsm.PrincipalSystem {
		if ent.Action == fsm.ActionAnomalyDetected {
			e.restoreCooldown(ent)
		}
		return nil
	}
	switch ent.Action {
	case fsm.ActionLoginFailed:
		e.loginFailed(ent)
	case fsm.ActionLoginSucceeded:
		e.loginSucceeded(ent)
	case fsm.ActionAuthFailed:
		if ent.Metadata["username"] != "" {
			e.loginFailed(ent)
		}
	}
	if ent.Actor.Kind == fsm.PrincipalUser || ent.Actor.Kind == fsm.PrincipalAPIKey ||
		ent.Actor.Kind == fsm.PrincipalOperator || ent.Actor.Kind == fsm.PrincipalDev {
		e.behaviour(ent)
	}
	return e.out
}

// restoreCooldown reads an anomaly_detected entry's kind, key and level back
// into the cool-downs, so replaying a log does not raise an anomaly twice.
func (e *Engine) restoreCooldown(ent *fsm.AuditEntry) {
	key := ent.Metadata["key"]
	if key == "" {
		return
	}
	e.Suppress(ent.Tenant, key, fsm.ResponseLevel(ent.Metadata["level"]), ent.Time.Add(e.cooldownOf(fsm.AnomalyKind(ent.Metadata["kind"]))))
}

// cooldownOf is how long a raised key stays quiet: the configured cool-down,
// and at least an hour for unusual access (one alert per actor per hour) and
// credential stuffing (a slow run goes on for hours; its address is blocked
// for an hour by default).
func (e *Engine) cooldownOf(k fsm.AnomalyKind) time.Duration {
	switch k {
	case fsm.AnomalyUnusualAccess, fsm.AnomalyCredentialStuffing:
		return max(e.cfg.Cooldown, time.Hour)
	case fsm.AnomalyBruteForce:
		return max(e.cfg.Cooldown, e.cfg.BruteForceWindow)
	}
	return e.cfg.Cooldown
}

// raise emits d unless its key is cooling down at the same or a higher level.
// It returns whether d was emitted (or, in warm mode, would have been).
func (e *Engine) raise(d Detection, extraKeys ...string) bool {
	d.Score = round3(clamp01(d.Score))
	d.Level = Recommend(d.Score)
	rank := d.Level.Rank()
	k := d.Tenant + "\x00" + d.Key
	if c, ok := e.cool.get(k); ok && d.Time.Before(c.until) && rank <= c.rank {
		return false
	}
	if e.warm {
		return false
	}
	until := d.Time.Add(e.cooldownOf(d.Kind))
	e.cool.put(k, cooldown{until: until, rank: rank})
	for _, x := range extraKeys {
		e.Suppress(d.Tenant, x, d.Level, until)
	}
	e.counts[d.Kind]++
	e.out = append(e.out, d)
	return true
}

// cooling reports whether key is cooling down at rank or above at t.
func (e *Engine) cooling(tenant, key string, rank int, t time.Time) bool {
	c, ok := e.cool.peek(tenant + "\x00" + key)
	return ok && t.Before(c.until) && rank <= c.rank
}

// actorKey names an actor within its tenant.
func actorKey(a *fsm.Actor) string {
	id := a.ID
	if id == "" {
		id = strings.ToLower(a.Name)
	}
	return string(a.Kind) + ":" + id
}

func f(name string, v, threshold float64, detail string) fsm.Factor {
	return fsm.Factor{Name: name, Value: round3(v), Threshold: threshold, Detail: detail}
}

func itoa(n int) string { return strconv.Itoa(n) }

// ring is a small ring of timestamps (unix nanoseconds) with a tag.
type hit struct {
	t   int64
	tag string
}

// window keeps the latest hits, at most max of them: it grows as hits come
// (most accounts and addresses see one or two failures) and then turns into
// a ring.
type window struct {
	hits []hit
	next int // once full, the oldest slot
	max  int
}

func newWindow(capacity int) window { return window{max: capacity} }

func (w *window) add(t int64, tag string) {
	if len(w.hits) < w.max {
		w.hits = append(w.hits, hit{t, tag})
		return
	}
	w.hits[w.next] = hit{t, tag}
	w.next = (w.next + 1) % w.max
}

// each calls fn for every hit not older than since.
func (w *window) each(since int64, fn func(h hit)) {
	for _, h := range w.hits {
		if h.t >= since {
			fn(h)
		}
	}
}

func (w *window) count(since int64) int {
	c := 0
	w.each(since, func(hit) { c++ })
	return c
}
