package threat

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// actorState is what the detectors know about one actor (a user, an API key,
// the operator): its baseline of hours and actions, its recent actions
// (velocity), denied attempts, read windows and login addresses.
type actorState struct {
	// Baseline: exponentially decayed counts. Each event adds weight
	// 2^((t-ref)/halfLife), so older events count less without touching
	// every counter on every event; the counters are rescaled now and then.
	ref     int64
	hours   [24]float64
	actions []actionCount
	total   float64
	first   int64
	last    int64

	recent []int64 // velocity: times of the last VelocityActions actions (a ring)
	next   int     // the ring's oldest slot once full
	denied *window // permission_denied (allocated on the first)

	// Reads: the current window and the mean of past active windows.
	readStart int64
	readCount float64
	readMean  float64
	readN     int
	readFlag  bool // the current window was anomalous: not learned

	ips     []string // recent login addresses
	newIP   string
	newIPAt int64
}

type actionCount struct {
	action fsm.Action
	n      float64
}

const maxActions = 48

func (e *Engine) actor(tenant string, a *fsm.Actor) *actorState {
	k := tenant + "\x00" + actorKey(a)
	st, ok := e.actors.get(k)
	if !ok {
		st = &actorState{recent: make([]int64, 0, e.cfg.VelocityActions)}
		e.actors.put(k, st)
	}
	return st
}

func (a *actorState) knowsIP(ip string) bool {
	for _, x := range a.ips {
		if x == ip {
			return true
		}
	}
	return false
}

// addIP remembers ip, which must be the engine's own copy (Engine).
func (a *actorState) addIP(ip string) {
	if len(a.ips) >= 16 {
		copy(a.ips, a.ips[1:])
		a.ips = a.ips[:15]
	}
	a.ips = append(a.ips, ip)
}

// weight returns the weight of an event at t, rescaling the counters when
// the weights grow large.
func (a *actorState) weight(t int64, halfLife time.Duration) float64 {
	if a.total == 0 {
		a.ref = t
	}
	x := float64(t-a.ref) / float64(halfLife)
	if x > 40 { // 2^40: rescale so that the weight at t is 1
		s := math.Exp2(-x)
		for i := range a.hours {
			a.hours[i] *= s
		}
		for i := range a.actions {
			a.actions[i].n *= s
		}
		a.total *= s
		a.ref, x = t, 0
	}
	return math.Exp2(x)
}

func (a *actorState) actionShare(act fsm.Action) float64 {
	for _, c := range a.actions {
		if c.action == act {
			return c.n / a.total
		}
	}
	return 0
}

func (a *actorState) learn(t int64, hour int, act fsm.Action, halfLife time.Duration) {
	w := a.weight(t, halfLife)
	if a.first == 0 {
		a.first = t
	}
	a.last = max(a.last, t)
	a.hours[hour] += w
	a.total += w
	for i := range a.actions {
		if a.actions[i].action == act {
			a.actions[i].n += w
			return
		}
	}
	if len(a.actions) >= maxActions {
		// Forget the rarest action.
		min := 0
		for i := range a.actions {
			if a.actions[i].n < a.actions[min].n {
				min = i
			}
		}
		a.actions[min] = actionCount{fsm.Action(strings.Clone(string(act))), w}
		return
	}
	a.actions = append(a.actions, actionCount{fsm.Action(strings.Clone(string(act))), w})
}

// effective is the decayed number of events at t.
func (a *actorState) effective(t int64, halfLife time.Duration) float64 {
	if a.total == 0 {
		return 0
	}
	return a.total / math.Exp2(float64(t-a.ref)/float64(halfLife))
}

// sensitive actions weigh more when unusual.
var sensitive = map[fsm.Action]bool{
	fsm.ActionRoleChanged: true, fsm.ActionAPIKeyCreated: true, fsm.ActionUserCreated: true, fsm.ActionUserDeleted: true,
	fsm.ActionIPRuleRemoved: true, fsm.ActionIPRuleAdded: true, fsm.ActionConfigChanged: true, fsm.ActionPasswordChanged: true,
	fsm.ActionTenantUpdated: true, fsm.ActionKMSOperation: true, fsm.ActionAPIKeyRevoked: true,
}

// behaviour runs the per-actor detectors: velocity, privilege escalation,
// exfiltration and unusual access (in that order, then it learns).
func (e *Engine) behaviour(ent *fsm.AuditEntry) {
	if ent.Action == fsm.ActionLoginFailed || ent.Action == fsm.ActionAuthFailed {
		return // the actor named by a failed login is the victim, not the one acting
	}
	tenant := ent.Tenant
	a := e.actor(tenant, &ent.Actor)
	t := ent.Time.UnixNano()
	aggregated := ent.Metadata["count"] != ""

	read := e.reads[ent.Action]
	if !aggregated && !read && (ent.Actor.Kind == fsm.PrincipalUser || ent.Actor.Kind == fsm.PrincipalAPIKey) {
		// Reads are the data plane (exfiltration watches them); the operator
		// token and dev mode are the cluster's own automation.
		e.velocity(ent, a, t)
	}
	if ent.Action == fsm.ActionPermissionDenied || ent.Action == fsm.ActionCrossTenantAttempt {
		e.deniedAttempt(ent, a, t)
	}
	if ent.Action == fsm.ActionRoleChanged || ent.Action == fsm.ActionUserCreated {
		e.adminGrant(ent)
	}
	if ent.Action == fsm.ActionAPIKeyCreated {
		e.keyAtCeiling(ent, a, t)
	}
	if read {
		e.read(ent, a, t)
	}
	if aggregated || ent.Outcome == fsm.OutcomeFailure {
		return
	}
	local := ent.Time.In(e.cfg.Location)
	e.unusual(ent, a, t, local.Hour())
	a.learn(t, local.Hour(), ent.Action, e.cfg.BaselineHalfLife)
}

// subjectOf is the actor as a subject of responses.
func subjectOf(a *fsm.Actor) fsm.Subject {
	switch a.Kind {
	case fsm.PrincipalUser:
		return fsm.Subject{UserID: a.ID, Username: a.Name}
	case fsm.PrincipalAPIKey:
		return fsm.Subject{KeyID: a.ID}
	}
	return fsm.Subject{Username: a.Name}
}

func (e *Engine) velocity(ent *fsm.AuditEntry, a *actorState, t int64) {
	V := e.cfg.VelocityActions
	if len(a.recent) < V {
		a.recent = append(a.recent, t)
		if len(a.recent) < V {
			return
		}
	} else {
		a.recent[a.next] = t
		a.next = (a.next + 1) % V
	}
	oldest := a.recent[a.next] // the slot the next action overwrites
	elapsed := time.Duration(t - oldest)
	if elapsed > e.cfg.VelocityWindow {
		return
	}
	speed := float64(e.cfg.VelocityWindow) / math.Max(float64(elapsed), float64(time.Millisecond))
	score := 0.5 + 0.25*min(1, math.Log2(speed)/2)
	if ent.Actor.Kind != fsm.PrincipalUser {
		// Keys are automation, fast by nature: raised as an alert, never
		// acted upon on speed alone.
		score = 0.45
	}
	e.raise(Detection{Tenant: ent.Tenant, Kind: fsm.AnomalyVelocity, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
		Key: "ve:" + actorKey(&ent.Actor), Subject: subjectOf(&ent.Actor),
		Score: score,
		Factors: []fsm.Factor{
			f("actions", float64(V), float64(V), "within "+e.cfg.VelocityWindow.String()),
			f("elapsed_seconds", elapsed.Seconds(), e.cfg.VelocityWindow.Seconds(), ""),
		},
		Summary: itoa(V) + " actions by " + actorLabel(&ent.Actor) + " in " + elapsed.Round(time.Millisecond).String()})
}

func actorLabel(a *fsm.Actor) string {
	if a.Name != "" {
		return string(a.Kind) + " " + a.Name
	}
	return string(a.Kind) + " " + a.ID
}

func (e *Engine) deniedAttempt(ent *fsm.AuditEntry, a *actorState, t int64) {
	if a.denied == nil {
		w := newWindow(max(2*e.cfg.DeniedAttempts, 8))
		a.denied = &w
	}
	a.denied.add(t, strings.Clone(ent.Resource))
	T := e.cfg.DeniedAttempts
	since := t - int64(e.cfg.DeniedWindow)
	res := map[string]bool{}
	n := 0
	a.denied.each(since, func(h hit) { n++; res[h.tag] = true })
	if n < T {
		return
	}
	d := Detection{Tenant: ent.Tenant, Kind: fsm.AnomalyPrivilegeEscalation, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
		Key: "pe:denied:" + actorKey(&ent.Actor), Subject: subjectOf(&ent.Actor),
		Score: 0.55 + 0.2*min(1, float64(n-T)/float64(T)),
		Factors: []fsm.Factor{
			f("denied_attempts", float64(n), float64(T), "within "+e.cfg.DeniedWindow.String()),
			f("distinct_resources", float64(len(res)), 0, ""),
		},
		Summary: itoa(n) + " denied attempts above the role of " + actorLabel(&ent.Actor)}
	if p := ent.Metadata["permission"]; p != "" {
		d.Factors = append(d.Factors, f("permission", 1, 0, p))
	}
	e.raise(d)
}

// businessHours reports whether t falls on a weekday within the configured hours.
func (e *Engine) businessHours(t time.Time) bool {
	l := t.In(e.cfg.Location)
	if wd := l.Weekday(); wd == time.Saturday || wd == time.Sunday {
		return false
	}
	return l.Hour() >= e.cfg.BusinessStart && l.Hour() < e.cfg.BusinessEnd
}

// adminGrant raises a role change (or a user creation) granting admin outside
// business hours.
func (e *Engine) adminGrant(ent *fsm.AuditEntry) {
	if ent.Metadata["role"] != string(auth.RoleAdmin) || ent.Outcome == fsm.OutcomeFailure || e.businessHours(ent.Time) {
		return
	}
	d := Detection{Tenant: ent.Tenant, Kind: fsm.AnomalyPrivilegeEscalation, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
		Key: "pe:grant:" + actorKey(&ent.Actor) + ":" + ent.Resource, Subject: subjectOf(&ent.Actor), Score: 0.6,
		Factors: []fsm.Factor{
			f("admin_granted", 1, 0, ent.Resource),
			f("local_hour", float64(ent.Time.In(e.cfg.Location).Hour()), 0,
				"business hours "+itoa(e.cfg.BusinessStart)+"-"+itoa(e.cfg.BusinessEnd)+" on weekdays"),
		},
		Summary: actorLabel(&ent.Actor) + " granted admin to " + ent.Resource + " outside business hours"}
	if old := ent.Metadata["old_role"]; old != "" {
		d.Factors = append(d.Factors, f("previous_role", 1, 0, old))
	}
	e.raise(d)
}

// keyAtCeiling raises an API key created with its creator's own role (the
// highest it may grant) shortly after the creator logged in from a new IP.
func (e *Engine) keyAtCeiling(ent *fsm.AuditEntry, a *actorState, t int64) {
	role := ent.Metadata["role"]
	if ent.Actor.Kind != fsm.PrincipalUser || role == "" || role != ent.Actor.Role || a.newIP == "" ||
		t-a.newIPAt > int64(e.cfg.NewIPKeyWindow) || t < a.newIPAt {
		return
	}
	s := subjectOf(&ent.Actor)
	s.IP = a.newIP
	if id, ok := strings.CutPrefix(ent.Resource, "api-key/"); ok {
		s.KeyID = id
	}
	e.raise(Detection{Tenant: ent.Tenant, Kind: fsm.AnomalyPrivilegeEscalation, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
		Key: "pe:key:" + actorKey(&ent.Actor), Subject: s, Score: 0.8,
		Factors: []fsm.Factor{
			f("key_role_at_ceiling", 1, 0, role),
			f("minutes_since_new_ip_login", time.Duration(t-a.newIPAt).Minutes(), e.cfg.NewIPKeyWindow.Minutes(), a.newIP),
		},
		Summary: actorLabel(&ent.Actor) + " created a " + role + " key " + time.Duration(t-a.newIPAt).Round(time.Second).String() +
			" after logging in from new address " + a.newIP})
}

// read counts reads in fixed windows and compares the current window with
// the mean of the actor's past active windows.
func (e *Engine) read(ent *fsm.AuditEntry, a *actorState, t int64) {
	n := 1.0
	if c := ent.Metadata["count"]; c != "" {
		if v, err := strconv.ParseFloat(c, 64); err == nil && v > 0 && !math.IsInf(v, 0) {
			n = math.Min(v, 1e9)
		}
	}
	win := int64(e.cfg.ReadWindow)
	start := t - t%win
	if start != a.readStart {
		if a.readCount > 0 && !a.readFlag && start > a.readStart {
			// Fold the finished window into the baseline: a running mean over
			// the first windows, then an exponential one (about 2×MinWindows).
			a.readN++
			alpha := math.Max(1/float64(a.readN), 1/float64(2*e.cfg.ExfilMinWindows))
			a.readMean += alpha * (a.readCount - a.readMean)
		}
		if start > a.readStart {
			a.readStart, a.readCount, a.readFlag = start, 0, false
		}
	}
	if start == a.readStart {
		a.readCount += n
	}
	if a.readN < e.cfg.ExfilMinWindows || a.readCount < float64(e.cfg.ExfilMinReads) || a.readMean <= 0 {
		return
	}
	ratio := a.readCount / a.readMean
	if ratio < e.cfg.ExfilFactor {
		return
	}
	a.readFlag = true
	e.raise(Detection{Tenant: ent.Tenant, Kind: fsm.AnomalyDataExfiltration, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
		Key: "ex:" + actorKey(&ent.Actor), Subject: subjectOf(&ent.Actor),
		Score: 0.6 + 0.3*min(1, math.Log2(ratio/e.cfg.ExfilFactor)/2),
		Factors: []fsm.Factor{
			f("read_rate_ratio", ratio, e.cfg.ExfilFactor, "reads per "+e.cfg.ReadWindow.String()+" against the actor's baseline"),
			f("reads", a.readCount, float64(e.cfg.ExfilMinReads), ""),
			f("baseline_reads", a.readMean, 0, "mean of "+itoa(a.readN)+" active windows"),
		},
		Summary: actorLabel(&ent.Actor) + " read " + strconv.FormatFloat(ratio, 'f', 1, 64) + "× its normal rate"})
}

// unusual compares the entry's hour and action with the actor's baseline,
// once the baseline has enough events over enough time.
func (e *Engine) unusual(ent *fsm.AuditEntry, a *actorState, t int64, hour int) {
	if a.effective(t, e.cfg.BaselineHalfLife) < float64(e.cfg.BaselineEvents) ||
		time.Duration(a.last-a.first) < e.cfg.BaselineMinSpan {
		return
	}
	share := (a.hours[hour] + 0.5*(a.hours[(hour+23)%24]+a.hours[(hour+1)%24])) / a.total
	if share >= e.cfg.UnusualHourShare {
		return // an unusual action at a usual hour is not raised on its own
	}
	d := Detection{Tenant: ent.Tenant, Kind: fsm.AnomalyUnusualAccess, Actor: ent.Actor, Seq: ent.Seq, Time: ent.Time,
		Key: "ua:" + actorKey(&ent.Actor), Subject: subjectOf(&ent.Actor), Score: 0.45,
		Factors: []fsm.Factor{f("hour_share", share, e.cfg.UnusualHourShare, "local hour "+itoa(hour))},
		Summary: actorLabel(&ent.Actor) + " acting at an unusual hour (" + itoa(hour) + ":00)"}
	if as := a.actionShare(ent.Action); as < 0.001 {
		d.Score += 0.15
		d.Factors = append(d.Factors, f("new_action", as, 0.001, string(ent.Action)))
		d.Summary += ", " + string(ent.Action) + " not in its baseline"
		if sensitive[ent.Action] {
			d.Score += 0.09
			d.Factors = append(d.Factors, f("sensitive_action", 1, 0, string(ent.Action)))
		}
	}
	e.raise(d)
}
