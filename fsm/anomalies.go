package fsm

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/allsource/guard/auth"
)

// Threat detection state (DESIGN.md §7). The detectors run on the leader
// (package threat); what they decide reaches every replica only through
// CmdRecordAnomalies, which stores the anomaly, advances the per-tenant
// watermark of analysed audit entries and applies the automatic responses in
// one raft entry. A new leader reads the watermarks and resumes after them.
var (
	bAnomalies      = []byte("anomalies")       // tenant \x00 anomaly id → Anomaly
	bThreatMarks    = []byte("threat_marks")    // tenant \x00 → ThreatMark (last analysed audit seq)
	bThreatPolicies = []byte("threat_policies") // tenant \x00 → ThreatPolicy ("" is the cluster's)
)

// Audit actions of threat detection and its responses.
const (
	ActionUserLocked      Action = "user_locked"
	ActionSessionsRevoked Action = "sessions_revoked"
	ActionMFARequired     Action = "mfa_required"
	ActionAPIKeyRestored  Action = "api_key_restored"
	ActionAnomalyUndone   Action = "anomaly_undone"
	ActionPolicyChanged   Action = "threat_policy_changed"
)

// ChangeAnomaly is the change kind of a stored or undone anomaly.
const ChangeAnomaly ChangeKind = "anomaly"

// AnomalyKind names a detector.
type AnomalyKind string

const (
	AnomalyBruteForce          AnomalyKind = "brute_force"
	AnomalyCredentialStuffing  AnomalyKind = "credential_stuffing"
	AnomalyUnusualAccess       AnomalyKind = "unusual_access"
	AnomalyPrivilegeEscalation AnomalyKind = "privilege_escalation"
	AnomalyDataExfiltration    AnomalyKind = "data_exfiltration"
	AnomalyVelocity            AnomalyKind = "velocity"
)

// AnomalyKinds lists every kind, in a fixed order (metrics, validation).
var AnomalyKinds = []AnomalyKind{AnomalyBruteForce, AnomalyCredentialStuffing, AnomalyUnusualAccess,
	AnomalyPrivilegeEscalation, AnomalyDataExfiltration, AnomalyVelocity}

func (k AnomalyKind) valid() bool {
	for _, x := range AnomalyKinds {
		if x == k {
			return true
		}
	}
	return false
}

// ResponseLevel is a recommended action, ordered: Monitor < Alert <
// RequireMFA < Block < RevokeAccess.
type ResponseLevel string

const (
	LevelMonitor      ResponseLevel = "monitor"
	LevelAlert        ResponseLevel = "alert"
	LevelRequireMFA   ResponseLevel = "require_mfa"
	LevelBlock        ResponseLevel = "block"
	LevelRevokeAccess ResponseLevel = "revoke_access"
)

var levelRank = map[ResponseLevel]int{LevelMonitor: 1, LevelAlert: 2, LevelRequireMFA: 3, LevelBlock: 4, LevelRevokeAccess: 5}

// Rank orders levels (0 for an unknown one).
func (l ResponseLevel) Rank() int { return levelRank[l] }

// Valid reports whether l is one of the five levels.
func (l ResponseLevel) Valid() bool { return l.Rank() > 0 }

// Factor is one measured reason behind a score.
type Factor struct {
	Name      string  `json:"name"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold,omitempty"`
	Detail    string  `json:"detail,omitempty"`
}

// Subject is who or what an anomaly is about; any combination may be set.
type Subject struct {
	UserID   string `json:"user_id,omitempty"`
	Username string `json:"username,omitempty"`
	KeyID    string `json:"key_id,omitempty"`
	IP       string `json:"ip,omitempty"`
}

// ResponseKind is one automatic action.
type ResponseKind string

const (
	RespLockUser    ResponseKind = "lock_user"    // refuse logins until Until
	RespEndSessions ResponseKind = "end_sessions" // tokens issued before now stop working
	RespRevokeKey   ResponseKind = "revoke_key"
	RespBlockIP     ResponseKind = "block_ip"    // an IP rule (tenant or global) expiring at Until
	RespRequireMFA  ResponseKind = "require_mfa" // the next login needs a second factor
)

// ResponseAction is an automatic action: proposed by the leader (Kind,
// Target, Scope, RuleID, Until) and completed by Apply (Applied, Result).
type ResponseAction struct {
	Kind   ResponseKind `json:"kind"`
	Target string       `json:"target"`          // user id, key id, or IP prefix
	Scope  string       `json:"scope,omitempty"` // block_ip: "tenant" or "global"
	RuleID string       `json:"rule_id,omitempty"`
	Until  time.Time    `json:"until,omitzero"`

	Applied bool   `json:"applied"`
	Result  string `json:"result,omitempty"`
	Undone  bool   `json:"undone,omitempty"`
}

// Anomaly is one recorded detection and what was done about it.
type Anomaly struct {
	ID      string        `json:"id"`
	Tenant  string        `json:"tenant"`
	Kind    AnomalyKind   `json:"kind"`
	Score   float64       `json:"score"`
	Level   ResponseLevel `json:"level"`
	Factors []Factor      `json:"factors"`
	Subject Subject       `json:"subject"`
	Actor   Actor         `json:"actor"`
	Summary string        `json:"summary"`
	// Key is what the anomaly is about, per kind; the detector does not raise
	// the same key again within its cool-down.
	Key string `json:"key"`
	// The audit entry whose analysis raised it.
	TriggerSeq  uint64           `json:"trigger_seq"`
	TriggerTime time.Time        `json:"trigger_time"`
	Actions     []ResponseAction `json:"actions"`
	DetectedAt  time.Time        `json:"detected_at"`
	Index       uint64           `json:"index"` // raft index that recorded it
	UndoneAt    time.Time        `json:"undone_at,omitzero"`
	UndoneBy    string           `json:"undone_by,omitempty"`
}

// ThreatMark is the replicated watermark of one tenant's analysed audit chain.
// Hash, when set, is the hash of the entry at Seq as the detector saw it:
// a mark (and the anomalies proposed with it) computed from a log that has
// since been replaced — a snapshot restored under a running leader — does
// not match and is ignored.
type ThreatMark struct {
	Tenant string `json:"tenant"`
	Seq    uint64 `json:"seq"`
	Hash   string `json:"hash,omitempty"`
}

// RecordAnomaliesCmd is the payload of CmdRecordAnomalies, proposed by the
// leader's detector runner: watermarks (also sent alone, as checkpoints) and
// the anomalies found up to them, with their automatic actions.
type RecordAnomaliesCmd struct {
	Marks     []ThreatMark `json:"marks"`
	Anomalies []Anomaly    `json:"anomalies,omitempty"`
}

// RecordResult is CmdRecordAnomalies' value.
type RecordResult struct {
	Recorded []*Anomaly `json:"recorded"`
	// Skipped counts anomalies already recorded (same id) or behind their
	// tenant's watermark: a deposed leader's late proposal changes nothing.
	Skipped int `json:"skipped"`
}

// UndoAnomalyCmd reverses an anomaly's automatic actions.
type UndoAnomalyCmd struct {
	Tenant string `json:"tenant"`
	ID     string `json:"id"`
}

// ThreatPolicy is a tenant's response policy ("" is the cluster's policy,
// for attacks on the cluster chain such as logins to unknown tenants).
type ThreatPolicy struct {
	Tenant string `json:"tenant"`
	// AutoRespond applies actions automatically; when false anomalies are
	// only recorded and alerted.
	AutoRespond bool `json:"auto_respond"`
	// MaxLevel is the highest recommended level acted upon automatically;
	// an anomaly above it gets MaxLevel's actions.
	MaxLevel     ResponseLevel `json:"max_level"`
	LockUserFor  time.Duration `json:"lock_user_for"`
	BlockIPFor   time.Duration `json:"block_ip_for"`
	BlockIPScope string        `json:"block_ip_scope"` // tenant or global (global: operator only)
	// RequireMFAForAdmins: users with the admin role must log in with a
	// second factor.
	RequireMFAForAdmins bool      `json:"require_mfa_for_admins"`
	UpdatedAt           time.Time `json:"updated_at,omitzero"`
}

// DefaultThreatPolicy applies to a tenant that has not set one.
func DefaultThreatPolicy(tenant string) ThreatPolicy {
	return ThreatPolicy{Tenant: tenant, AutoRespond: true, MaxLevel: LevelRevokeAccess,
		LockUserFor: 15 * time.Minute, BlockIPFor: time.Hour, BlockIPScope: "tenant"}
}

// SetThreatPolicyCmd is the payload of CmdSetThreatPolicy.
type SetThreatPolicyCmd struct {
	Policy ThreatPolicy `json:"policy"`
}

// Validate checks a policy.
func (p *ThreatPolicy) Validate() *Error {
	if p.Tenant != "" {
		if err := ValidTenantID(p.Tenant); err != nil {
			return errf(CodeInvalidArgument, "%v", err)
		}
	}
	if !p.MaxLevel.Valid() {
		return errf(CodeInvalidArgument, "max_level must be monitor, alert, require_mfa, block or revoke_access")
	}
	if p.LockUserFor < time.Minute || p.LockUserFor > 30*24*time.Hour ||
		p.BlockIPFor < time.Minute || p.BlockIPFor > 30*24*time.Hour {
		return errf(CodeInvalidArgument, "lock_user_for and block_ip_for must be between 1m and 720h")
	}
	if p.BlockIPScope != "tenant" && p.BlockIPScope != "global" {
		return errf(CodeInvalidArgument, "block_ip_scope must be tenant or global")
	}
	if p.Tenant == "" && p.BlockIPScope != "global" {
		return errf(CodeInvalidArgument, "the cluster policy blocks IPs globally")
	}
	return nil
}

const (
	maxAnomaliesPerCmd = 1000
	maxFactors         = 16
	maxActions         = 8
)

// Validate checks an anomaly as proposed (before Apply completes it).
func (a *Anomaly) Validate() *Error {
	if a.Tenant != "" {
		if err := ValidTenantID(a.Tenant); err != nil {
			return errf(CodeInvalidArgument, "%v", err)
		}
	}
	if e := ValidObjectID("anomaly", a.ID); e != nil {
		return e
	}
	if !a.Kind.valid() {
		return errf(CodeInvalidArgument, "unknown anomaly kind %q", a.Kind)
	}
	if math.IsNaN(a.Score) || a.Score < 0 || a.Score > 1 {
		return errf(CodeInvalidArgument, "score must be in [0, 1]")
	}
	if !a.Level.Valid() {
		return errf(CodeInvalidArgument, "unknown level %q", a.Level)
	}
	if len(a.Factors) > maxFactors || len(a.Actions) > maxActions {
		return errf(CodeInvalidArgument, "at most %d factors and %d actions", maxFactors, maxActions)
	}
	for _, f := range a.Factors {
		if e := validName("factor", f.Name+f.Detail, 512); e != nil {
			return e
		}
		if math.IsNaN(f.Value) || math.IsInf(f.Value, 0) || math.IsNaN(f.Threshold) || math.IsInf(f.Threshold, 0) {
			return errf(CodeInvalidArgument, "factor values must be finite")
		}
	}
	for _, s := range []string{a.Summary, a.Key, a.Subject.UserID, a.Subject.Username, a.Subject.KeyID, a.Subject.IP,
		a.Actor.ID, a.Actor.Name, a.Actor.Role} {
		if e := validName("anomaly text", s, 512); e != nil {
			return e
		}
	}
	for i := range a.Actions {
		if e := a.Actions[i].validate(a.Tenant); e != nil {
			return e
		}
	}
	return nil
}

func (r *ResponseAction) validate(tenant string) *Error {
	switch r.Kind {
	case RespLockUser, RespEndSessions, RespRequireMFA:
		if tenant == "" {
			return errf(CodeInvalidArgument, "%s needs a tenant", r.Kind)
		}
		if e := ValidObjectID("user", r.Target); e != nil {
			return e
		}
		if r.Kind == RespLockUser && r.Until.IsZero() {
			return errf(CodeInvalidArgument, "lock_user needs until")
		}
	case RespRevokeKey:
		if tenant == "" {
			return errf(CodeInvalidArgument, "revoke_key needs a tenant")
		}
		if e := ValidObjectID("api key", r.Target); e != nil {
			return e
		}
	case RespBlockIP:
		if r.Scope != "tenant" && r.Scope != "global" || (r.Scope == "tenant" && tenant == "") {
			return errf(CodeInvalidArgument, "block_ip scope must be tenant (with a tenant) or global")
		}
		if e := ValidObjectID("ip rule", r.RuleID); e != nil {
			return e
		}
		if _, err := netip.ParsePrefix(r.Target); err != nil {
			return errf(CodeInvalidArgument, "block_ip target must be a prefix")
		}
		if r.Until.IsZero() {
			return errf(CodeInvalidArgument, "block_ip needs until")
		}
	default:
		return errf(CodeInvalidArgument, "unknown response %q", r.Kind)
	}
	return nil
}

// threatPrincipal is the actor of automatic responses.
var threatPrincipal = Principal{Kind: PrincipalSystem, ID: "threat", Name: "threat-detector"}

// sub runs another command's handler inside this one's transaction with
// principal p: automatic responses reuse the very code (validation, quotas,
// change events, audit) of the commands an admin would send.
func (w *wtx) sub(t CommandType, p Principal, payload any) (any, *Error) {
	h, ok := handlers(t)
	if !ok {
		panic(fmt.Sprintf("fsm: no handler for %s", t))
	}
	raw, err := json.Marshal(payload)
	if err != nil {
		panic(fmt.Sprintf("fsm: encode %s: %v", t, err))
	}
	c := &Command{Type: t, Header: Header{Principal: p, Time: w.hdr.Time, RequestID: w.hdr.RequestID}, Payload: raw}
	saved := w.hdr
	w.hdr = &c.Header
	defer func() { w.hdr = saved }()
	return h(w, c)
}

func applyRecordAnomalies(w *wtx, c *Command) (any, *Error) {
	var p RecordAnomaliesCmd
	mustDecodePayload(c, &p)
	if c.Header.Principal.Kind != PrincipalSystem {
		return nil, errf(CodeForbidden, "only the cluster's detector records anomalies")
	}
	if len(p.Marks) == 0 || len(p.Marks) > maxAuditBatch || len(p.Anomalies) > maxAnomaliesPerCmd {
		return nil, errf(CodeInvalidArgument, "1 to %d marks and at most %d anomalies", maxAuditBatch, maxAnomaliesPerCmd)
	}
	marks := bucket(w.tx, bThreatMarks)
	fresh := map[string]uint64{} // tenant → new mark, for tenants whose mark moved forward
	seen := map[string]bool{}
	for _, m := range p.Marks {
		if m.Tenant != "" {
			if err := ValidTenantID(m.Tenant); err != nil {
				return nil, errf(CodeInvalidArgument, "%v", err)
			}
		}
		if seen[m.Tenant] {
			return nil, errf(CodeInvalidArgument, "tenant %q marked twice", m.Tenant)
		}
		seen[m.Tenant] = true
		var old ThreatMark
		if marks != nil {
			getJSON(marks, tprefix(m.Tenant), &old)
		}
		if m.Seq > old.Seq && (m.Hash == "" || w.auditHashAt(m.Tenant, m.Seq) == m.Hash) {
			fresh[m.Tenant] = m.Seq
		}
	}
	for i := range p.Anomalies {
		if e := p.Anomalies[i].Validate(); e != nil {
			return nil, e
		}
	}
	for _, m := range p.Marks { // in the command's order: replicas write alike
		if seq, ok := fresh[m.Tenant]; ok {
			putJSON(w.wbucket(bThreatMarks), tprefix(m.Tenant), &ThreatMark{Tenant: m.Tenant, Seq: seq, Hash: m.Hash})
		}
	}
	res := &RecordResult{Recorded: []*Anomaly{}}
	for i := range p.Anomalies {
		a := p.Anomalies[i]
		seq, ok := fresh[a.Tenant]
		if _, dup := w.reader().Anomaly(a.Tenant, a.ID); !ok || a.TriggerSeq > seq || dup {
			res.Skipped++
			continue
		}
		if a.Tenant != "" {
			if _, ok := w.reader().Tenant(a.Tenant); !ok {
				res.Skipped++ // deleted meanwhile
				continue
			}
		}
		a.DetectedAt, a.Index, a.UndoneAt, a.UndoneBy = w.now(), w.index, time.Time{}, ""
		w.appendAudit(AuditInput{Tenant: a.Tenant, Time: w.now(), Action: ActionAnomalyDetected,
			Actor: Actor{Kind: PrincipalSystem, ID: threatPrincipal.ID, Name: threatPrincipal.Name}, Resource: "anomaly/" + a.ID,
			Outcome: OutcomeSuccess, IP: a.Subject.IP, Metadata: anomalyAuditMeta(&a)})
		for j := range a.Actions {
			w.respond(&a, &a.Actions[j])
		}
		putJSON(w.wbucket(bAnomalies), tkey(a.Tenant, a.ID), &a)
		w.changed(ChangeAnomaly, a.Tenant, a.ID, false)
		res.Recorded = append(res.Recorded, &a)
	}
	return res, nil
}

// auditHashAt is the hash of tenant's entry seq ("" when there is none).
func (w *wtx) auditHashAt(tenant string, seq uint64) string {
	v := w.tx.Bucket(bAudit).Get(auditKey(tenant, seq))
	if v == nil {
		return ""
	}
	return auditRecordHash(v)
}

// anomalyAuditMeta is the metadata of an anomaly_detected entry. The detector
// reads "kind" and "key" back when it replays the log (cool-downs).
func anomalyAuditMeta(a *Anomaly) map[string]string {
	m := map[string]string{"id": a.ID, "kind": string(a.Kind), "score": strconv.FormatFloat(a.Score, 'f', 3, 64),
		"level": string(a.Level), "trigger_seq": strconv.FormatUint(a.TriggerSeq, 10), "key": a.Key}
	var fs []string
	for _, f := range a.Factors {
		fs = append(fs, f.Name+"="+strconv.FormatFloat(f.Value, 'g', 4, 64))
	}
	if len(fs) > 0 {
		m["factors"] = truncateString(strings.Join(fs, ","), 1024)
	}
	var acts []string
	for _, r := range a.Actions {
		acts = append(acts, string(r.Kind)+":"+r.Target)
	}
	if len(acts) > 0 {
		m["response"] = truncateString(strings.Join(acts, ","), 1024)
	}
	if a.Subject.UserID != "" {
		m["user_id"] = a.Subject.UserID
	}
	if a.Subject.Username != "" {
		m["username"] = truncateString(a.Subject.Username, 256)
	}
	if a.Subject.KeyID != "" {
		m["key_id"] = a.Subject.KeyID
	}
	return m
}

// respond applies one automatic action, recording its outcome in r. A
// response that cannot apply (the user was deleted, the tenant is at its IP
// rule quota) does not undo the others or the record.
func (w *wtx) respond(a *Anomaly, r *ResponseAction) {
	r.Applied, r.Result, r.Undone = false, "", false
	now := w.now()
	switch r.Kind {
	case RespLockUser, RespEndSessions:
		u, ok := w.reader().User(a.Tenant, r.Target)
		if !ok {
			r.Result = "user not found"
			return
		}
		meta := map[string]string{"anomaly": a.ID, "username": u.Username}
		action := ActionUserLocked
		if r.Kind == RespLockUser {
			if !r.Until.After(u.LockedUntil) {
				r.Result = "already locked until " + u.LockedUntil.Format(time.RFC3339)
				return
			}
			u.LockedUntil = r.Until.UTC()
			meta["locked_until"] = u.LockedUntil.Format(time.RFC3339)
		} else {
			u.TokensValidAfter = ceilSecond(now)
			action = ActionSessionsRevoked
		}
		u.UpdatedAt = now
		putJSON(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID), u)
		w.changed(ChangeUser, u.Tenant, u.ID, false)
		w.auditAs(threatPrincipal, a.Tenant, action, "user/"+u.ID, meta)
		r.Applied = true
	case RespRevokeKey:
		if _, e := w.sub(CmdRevokeAPIKey, threatPrincipal, &RevokeAPIKeyCmd{Tenant: a.Tenant, ID: r.Target}); e != nil {
			r.Result = e.Message
			return
		}
		r.Applied = true
	case RespBlockIP:
		tenant := a.Tenant
		if r.Scope == "global" {
			tenant = ""
		}
		if _, e := w.sub(CmdAddIPRule, threatPrincipal, &AddIPRuleCmd{ID: r.RuleID, Tenant: tenant, CIDR: r.Target,
			Action: IPBlock, Note: "anomaly " + a.ID + " (" + string(a.Kind) + ")", ExpiresAt: r.Until}); e != nil {
			r.Result = e.Message
			return
		}
		r.Applied = true
	case RespRequireMFA:
		u, ok := w.reader().User(a.Tenant, r.Target)
		if !ok {
			r.Result = "user not found"
			return
		}
		st := w.reader().mfaState(a.Tenant, r.Target)
		st.Required, st.RequiredBy, st.RequiredAt = true, a.ID, now
		w.putMFAState(st)
		w.changed(ChangeUser, u.Tenant, u.ID, false)
		w.auditAs(threatPrincipal, a.Tenant, ActionMFARequired, "user/"+u.ID, map[string]string{"anomaly": a.ID, "username": u.Username})
		r.Applied = true
	}
}

// auditAs appends an entry for the command being applied with p as actor.
func (w *wtx) auditAs(p Principal, tenant string, action Action, resource string, meta map[string]string) {
	saved := *w.hdr
	h := saved
	h.Principal = p
	w.hdr = &h
	w.audit(tenant, action, resource, OutcomeSuccess, meta)
	w.hdr = &saved
}

func applyUndoAnomaly(w *wtx, c *Command) (any, *Error) {
	var p UndoAnomalyCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if p.Tenant != "" {
		if err := ValidTenantID(p.Tenant); err != nil {
			return nil, errf(CodeInvalidArgument, "%v", err)
		}
		if _, e := authorize(w, pr, p.Tenant, auth.PermAdmin); e != nil {
			return nil, e
		}
	} else if e := requireOperator(pr); e != nil {
		return nil, e
	}
	ap, ok := w.reader().Anomaly(p.Tenant, p.ID)
	if !ok {
		return nil, errf(CodeNotFound, "anomaly not found")
	}
	a := *ap
	if !a.UndoneAt.IsZero() {
		return nil, errf(CodeFailedPrecondition, "anomaly was already undone")
	}
	if !pr.IsOperator() {
		for _, r := range a.Actions {
			if r.Applied && !r.Undone && r.Kind == RespBlockIP && r.Scope == "global" {
				return nil, errf(CodeForbidden, "the anomaly blocked an address for every tenant: only the operator undoes it")
			}
		}
	}
	now := w.now()
	for i := range a.Actions {
		r := &a.Actions[i]
		if !r.Applied || r.Undone {
			continue
		}
		r.Result = w.undo(pr, &a, r)
	}
	a.UndoneAt, a.UndoneBy = now, string(pr.Kind)+":"+pr.ID
	putJSON(w.wbucket(bAnomalies), tkey(a.Tenant, a.ID), &a)
	w.changed(ChangeAnomaly, a.Tenant, a.ID, false)
	w.audit(a.Tenant, ActionAnomalyUndone, "anomaly/"+a.ID, OutcomeSuccess, map[string]string{"kind": string(a.Kind)})
	return &a, nil
}

// undo reverses one applied action and says what happened.
func (w *wtx) undo(pr Principal, a *Anomaly, r *ResponseAction) string {
	now := w.now()
	switch r.Kind {
	case RespLockUser:
		u, ok := w.reader().User(a.Tenant, r.Target)
		if !ok {
			return "user no longer exists"
		}
		u.FailedLogins, u.FirstFailedAt, u.LockedUntil, u.UpdatedAt = 0, time.Time{}, time.Time{}, now
		putJSON(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID), u)
		w.changed(ChangeUser, u.Tenant, u.ID, false)
		w.audit(a.Tenant, ActionUserUpdated, "user/"+u.ID, OutcomeSuccess, map[string]string{"unlocked": "true", "anomaly": a.ID})
		r.Undone = true
		return "unlocked"
	case RespEndSessions:
		return "ended sessions cannot be restored; the user signs in again"
	case RespRevokeKey:
		k, ok := w.reader().APIKey(r.Target)
		if !ok || k.Tenant != a.Tenant {
			return "api key no longer exists"
		}
		if k.RevokedAt.IsZero() {
			r.Undone = true
			return "api key was not revoked"
		}
		k.RevokedAt = time.Time{}
		putJSON(w.tx.Bucket(bAPIKeys), []byte(k.ID), k)
		if t, ok := w.reader().Tenant(k.Tenant); ok {
			t.APIKeys++
			w.saveTenantCounters(t)
		}
		w.changed(ChangeAPIKey, k.Tenant, k.ID, false)
		w.audit(a.Tenant, ActionAPIKeyRestored, "api-key/"+k.ID, OutcomeSuccess, map[string]string{"name": k.Name, "anomaly": a.ID})
		r.Undone = true
		return "api key restored"
	case RespBlockIP:
		tenant := a.Tenant
		if r.Scope == "global" {
			tenant = ""
		}
		if _, ok := w.reader().IPRule(tenant, r.RuleID); !ok {
			r.Undone = true
			return "ip rule already gone (expired or removed)"
		}
		if _, e := w.sub(CmdRemoveIPRule, pr, &RemoveIPRuleCmd{Tenant: tenant, ID: r.RuleID}); e != nil {
			return "not undone: " + e.Message
		}
		r.Undone = true
		return "ip rule removed"
	case RespRequireMFA:
		st := w.reader().mfaState(a.Tenant, r.Target)
		if st.Required && st.RequiredBy == a.ID {
			st.Required, st.RequiredBy, st.RequiredAt = false, "", time.Time{}
			w.putMFAState(st)
			w.changed(ChangeUser, a.Tenant, r.Target, false)
		}
		r.Undone = true
		return "mfa requirement lifted"
	}
	return ""
}

func applySetThreatPolicy(w *wtx, c *Command) (any, *Error) {
	var p SetThreatPolicyCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	pol := p.Policy
	if e := pol.Validate(); e != nil {
		return nil, e
	}
	// A global block affects every tenant: only the operator chooses it.
	if pol.Tenant == "" || pol.BlockIPScope == "global" {
		if e := requireOperator(pr); e != nil {
			return nil, errf(CodeForbidden, "only the cluster operator sets the cluster policy or global IP blocks")
		}
	}
	if pol.Tenant != "" {
		if _, e := authorize(w, pr, pol.Tenant, auth.PermAdmin); e != nil {
			return nil, e
		}
	}
	pol.UpdatedAt = w.now()
	putJSON(w.wbucket(bThreatPolicies), tprefix(pol.Tenant), &pol)
	w.audit(pol.Tenant, ActionPolicyChanged, "threat-policy", OutcomeSuccess, map[string]string{
		"auto_respond": strconv.FormatBool(pol.AutoRespond), "max_level": string(pol.MaxLevel),
		"lock_user_for": pol.LockUserFor.String(), "block_ip_for": pol.BlockIPFor.String(), "block_ip_scope": pol.BlockIPScope,
		"require_mfa_for_admins": strconv.FormatBool(pol.RequireMFAForAdmins)})
	return &pol, nil
}

// ThreatPolicy returns a tenant's policy, or the default when it set none.
func (r *Reader) ThreatPolicy(tenant string) ThreatPolicy {
	if b := bucket(r.tx, bThreatPolicies); b != nil {
		var p ThreatPolicy
		if getJSON(b, tprefix(tenant), &p) {
			return p
		}
	}
	p := DefaultThreatPolicy(tenant)
	if tenant == "" {
		p.BlockIPScope = "global"
	}
	return p
}

// ThreatMarks returns every tenant's watermark.
func (r *Reader) ThreatMarks() map[string]uint64 {
	out := map[string]uint64{}
	if b := bucket(r.tx, bThreatMarks); b != nil {
		_ = b.ForEach(func(k, v []byte) error {
			var m ThreatMark
			mustUnmarshal(k, v, &m)
			out[m.Tenant] = m.Seq
			return nil
		})
	}
	return out
}

// Anomaly returns one recorded anomaly.
func (r *Reader) Anomaly(tenant, id string) (*Anomaly, bool) {
	b := bucket(r.tx, bAnomalies)
	if b == nil {
		return nil, false
	}
	var a Anomaly
	if !getJSON(b, tkey(tenant, id), &a) {
		return nil, false
	}
	return &a, true
}

// AnomalyQuery filters a tenant's anomalies.
type AnomalyQuery struct {
	Tenant string
	Kind   AnomalyKind
	Since  time.Time
	After  string // cursor: ids sort by triggering entry, oldest first
	Limit  int
}

// Anomalies lists a tenant's anomalies in id order (the order of the audit
// entries that raised them) after the cursor, and the next cursor ("" at
// the end).
func (r *Reader) Anomalies(q AnomalyQuery) ([]*Anomaly, string) {
	if q.Limit <= 0 || q.Limit > 1000 {
		q.Limit = 100
	}
	b := bucket(r.tx, bAnomalies)
	if b == nil {
		return nil, ""
	}
	prefix := tprefix(q.Tenant)
	start := prefix
	if q.After != "" {
		start = tkey(q.Tenant, q.After+"\x00")
	}
	var out []*Anomaly
	c := b.Cursor()
	for k, v := c.Seek(start); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
		var a Anomaly
		mustUnmarshal(k, v, &a)
		if q.Kind != "" && a.Kind != q.Kind || !q.Since.IsZero() && a.DetectedAt.Before(q.Since) {
			continue
		}
		if len(out) == q.Limit {
			return out, out[len(out)-1].ID
		}
		out = append(out, &a)
	}
	return out, ""
}

// RecentAnomalies returns tenant's anomalies raised by entries at or after
// since, newest first (a new leader restores the detectors' cool-downs).
func (r *Reader) RecentAnomalies(tenant string, since time.Time) []*Anomaly {
	b := bucket(r.tx, bAnomalies)
	if b == nil {
		return nil
	}
	prefix := tprefix(tenant)
	var out []*Anomaly
	c := b.Cursor()
	// Ids start with the triggering entry's sequence number: walk back from
	// the end of the tenant's range while entries are recent.
	k, v := c.Seek(tkey(tenant, "\xff"))
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && hasPrefix(k, prefix); k, v = c.Prev() {
		var a Anomaly
		mustUnmarshal(k, v, &a)
		if a.TriggerTime.Before(since) {
			break
		}
		out = append(out, &a)
	}
	return out
}

// AuditRaw returns copies of the stored records of up to limit entries of
// tenant's chain after seq, in order: the detector decodes them on several
// cores (decoding, not analysis, is the cost of reading the log).
func (r *Reader) AuditRaw(tenant string, after uint64, limit int) [][]byte {
	c := r.tx.Bucket(bAudit).Cursor()
	prefix := tprefix(tenant)
	var out [][]byte
	for k, v := c.Seek(auditKey(tenant, after+1)); k != nil && hasPrefix(k, prefix) && len(out) < limit; k, v = c.Next() {
		out = append(out, append([]byte(nil), v...))
	}
	return out
}
