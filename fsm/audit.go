package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Action names a security-relevant event (DESIGN.md §7).
type Action string

const (
	ActionLoginSucceeded     Action = "login_succeeded"
	ActionLoginFailed        Action = "login_failed"
	ActionLogout             Action = "logout"
	ActionTokenRefreshed     Action = "token_refreshed"
	ActionTokenReuse         Action = "token_reuse_detected"
	ActionPasswordChanged    Action = "password_changed"
	ActionAPIKeyCreated      Action = "api_key_created"
	ActionAPIKeyRevoked      Action = "api_key_revoked"
	ActionAPIKeyUsed         Action = "api_key_used"
	ActionPermissionDenied   Action = "permission_denied"
	ActionAuthFailed         Action = "authentication_failed"
	ActionRateLimitExceeded  Action = "rate_limit_exceeded"
	ActionIPBlocked          Action = "ip_blocked"
	ActionTenantCreated      Action = "tenant_created"
	ActionTenantUpdated      Action = "tenant_updated"
	ActionTenantSuspended    Action = "tenant_suspended"
	ActionTenantActivated    Action = "tenant_activated"
	ActionTenantDeleted      Action = "tenant_deleted"
	ActionUserCreated        Action = "user_created"
	ActionUserUpdated        Action = "user_updated"
	ActionUserDeleted        Action = "user_deleted"
	ActionRoleChanged        Action = "role_changed"
	ActionConfigChanged      Action = "config_changed"
	ActionIPRuleAdded        Action = "ip_rule_added"
	ActionIPRuleRemoved      Action = "ip_rule_removed"
	ActionKMSKeyCreated      Action = "kms_key_created"
	ActionKMSKeyRotated      Action = "kms_key_rotated"
	ActionKMSOperation       Action = "kms_operation"
	ActionKMSKeyGranted      Action = "kms_key_granted"
	ActionKMSKeyGrantRevoked Action = "kms_key_grant_revoked"
	ActionSigningKeyRotated  Action = "signing_key_rotated"
	ActionSnapshotTaken      Action = "snapshot_taken"
	ActionSnapshotRestored   Action = "snapshot_restored"
	ActionClusterChanged     Action = "cluster_changed"
	ActionOperatorBootstrap  Action = "operator_bootstrapped"
	ActionAnomalyDetected    Action = "anomaly_detected"
	ActionAuditRetention     Action = "audit_retention"
	ActionCrossTenantAttempt Action = "cross_tenant_attempt"
)

// Outcome of an audited action.
type Outcome string

const (
	OutcomeSuccess Outcome = "success"
	OutcomeFailure Outcome = "failure"
	OutcomePartial Outcome = "partial"
)

// Actor is who did it.
type Actor struct {
	Kind PrincipalKind `json:"kind"`
	ID   string        `json:"id,omitempty"`
	Name string        `json:"name,omitempty"`
	Role string        `json:"role,omitempty"`
}

// AuditEntry is one append-only, hash-chained audit record. Each tenant has its
// own chain (the empty tenant is the cluster's chain); Hash covers every other
// field and the previous entry's hash.
type AuditEntry struct {
	ID        string            `json:"id"`
	Tenant    string            `json:"tenant"`
	Seq       uint64            `json:"seq"`
	Index     uint64            `json:"index"` // the raft index that committed it
	Time      time.Time         `json:"time"`
	Action    Action            `json:"action"`
	Actor     Actor             `json:"actor"`
	Resource  string            `json:"resource,omitempty"`
	Outcome   Outcome           `json:"outcome"`
	IP        string            `json:"ip,omitempty"`
	UserAgent string            `json:"user_agent,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	Error     string            `json:"error,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	PrevHash  string            `json:"prev_hash"`
	Hash      string            `json:"hash"`
}

// AuditHead is the tip of one tenant's chain.
type AuditHead struct {
	Tenant   string `json:"tenant"`
	FirstSeq uint64 `json:"first_seq"` // oldest retained entry (retention moves it)
	Seq      uint64 `json:"seq"`       // newest entry; 0 when the chain is empty
	Hash     string `json:"hash"`      // newest entry's hash
}

// computeHash returns the chain hash of e (which must have PrevHash set).
func (e *AuditEntry) computeHash() string {
	c := *e
	c.Hash = ""
	b, err := json.Marshal(&c)
	if err != nil {
		panic(fmt.Sprintf("fsm: encode audit entry: %v", err))
	}
	h := sha256.New()
	h.Write([]byte(e.PrevHash))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// AuditInput is an audit record proposed from outside Apply (edges, login
// failures, KMS calls): the FSM assigns sequence, chain and id.
type AuditInput struct {
	Tenant    string            `json:"tenant"`
	Time      time.Time         `json:"time"`
	Action    Action            `json:"action"`
	Actor     Actor             `json:"actor"`
	Resource  string            `json:"resource,omitempty"`
	Outcome   Outcome           `json:"outcome"`
	IP        string            `json:"ip,omitempty"`
	UserAgent string            `json:"user_agent,omitempty"`
	RequestID string            `json:"request_id,omitempty"`
	Error     string            `json:"error,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
}

// AppendAuditCmd is the payload of CmdAppendAudit: one raft entry carries a
// whole batch (group commit).
type AppendAuditCmd struct {
	Entries []AuditInput `json:"entries"`
}

// AuditRetentionCmd drops entries older than Before, per tenant, oldest first.
type AuditRetentionCmd struct {
	Before time.Time `json:"before"`
}

const maxAuditBatch = 10000

// Validate checks an audit input's bounds.
func (a *AuditInput) Validate() *Error {
	if a.Tenant != "" {
		if err := ValidTenantID(a.Tenant); err != nil {
			return errf(CodeInvalidArgument, "%v", err)
		}
	}
	if a.Action == "" {
		return errf(CodeInvalidArgument, "audit action is required")
	}
	if a.Outcome == "" {
		a.Outcome = OutcomeSuccess
	}
	for _, f := range []struct {
		n, v string
		max  int
	}{{"action", string(a.Action), 64}, {"resource", a.Resource, 512}, {"ip", a.IP, 64},
		{"user_agent", a.UserAgent, 512}, {"request_id", a.RequestID, 128}, {"error", a.Error, 1024},
		{"actor.id", a.Actor.ID, 128}, {"actor.name", a.Actor.Name, 256}} {
		if len(f.v) > f.max {
			return errf(CodeInvalidArgument, "%s longer than %d bytes", f.n, f.max)
		}
	}
	if len(a.Metadata) > 32 {
		return errf(CodeInvalidArgument, "at most 32 metadata entries")
	}
	for k, v := range a.Metadata {
		if len(k) > 64 || len(v) > 1024 {
			return errf(CodeInvalidArgument, "metadata entries are bounded to 64-byte keys and 1 KiB values")
		}
	}
	return nil
}

// audit appends an entry for the command being applied, with the header's
// principal as actor.
func (w *wtx) audit(tenant string, action Action, resource string, outcome Outcome, meta map[string]string) {
	p := w.hdr.Principal
	if len(meta) == 0 {
		meta = nil
	}
	w.appendAudit(AuditInput{Tenant: tenant, Time: w.now(), Action: action,
		Actor:    Actor{Kind: p.Kind, ID: p.ID, Name: p.Name, Role: string(p.Role)},
		Resource: resource, Outcome: outcome, IP: w.hdr.IP, UserAgent: w.hdr.UserAgent,
		RequestID: w.hdr.RequestID, Metadata: meta})
}

func (w *wtx) appendAudit(in AuditInput) *AuditEntry {
	heads := w.tx.Bucket(bAuditHeads)
	var head AuditHead
	if !getJSON(heads, tprefix(in.Tenant), &head) {
		head = AuditHead{Tenant: in.Tenant, FirstSeq: 1}
	}
	w.auditN++
	e := &AuditEntry{
		ID: fmt.Sprintf("%016x-%04x", w.index, w.auditN), Tenant: in.Tenant, Seq: head.Seq + 1,
		Index: w.index, Time: in.Time.UTC(), Action: in.Action, Actor: in.Actor, Resource: in.Resource,
		Outcome: in.Outcome, IP: in.IP, UserAgent: in.UserAgent, RequestID: in.RequestID,
		Error: in.Error, Metadata: in.Metadata, PrevHash: head.Hash,
	}
	e.Hash = e.computeHash()
	putJSON(w.tx.Bucket(bAudit), auditKey(in.Tenant, e.Seq), e)
	head.Seq, head.Hash = e.Seq, e.Hash
	putJSON(heads, tprefix(in.Tenant), &head)
	w.changes = append(w.changes, Change{Index: w.index, Kind: ChangeAudit, Tenant: in.Tenant, Key: e.ID, Audit: e})
	return e
}

func auditKey(tenant string, seq uint64) []byte {
	return append(tprefix(tenant), u64(seq)...)
}

func applyAppendAudit(w *wtx, c *Command) (any, *Error) {
	var p AppendAuditCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if len(p.Entries) == 0 || len(p.Entries) > maxAuditBatch {
		return nil, errf(CodeInvalidArgument, "an audit batch holds 1 to %d entries", maxAuditBatch)
	}
	for i := range p.Entries {
		in := &p.Entries[i]
		if e := in.Validate(); e != nil {
			return nil, e
		}
		// Only the cluster itself (servers, edges) writes other tenants' entries,
		// and the cluster's own chain (the empty tenant).
		if !pr.IsOperator() && (pr.Tenant == "" || in.Tenant != pr.Tenant) {
			return nil, errf(CodeForbidden, "audit entries may only be written to the caller's tenant")
		}
	}
	for i := range p.Entries {
		w.appendAudit(p.Entries[i])
	}
	return len(p.Entries), nil
}

func applyAuditRetention(w *wtx, c *Command) (any, *Error) {
	var p AuditRetentionCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if p.Before.IsZero() {
		return nil, errf(CodeInvalidArgument, "before is required")
	}
	heads := w.tx.Bucket(bAuditHeads)
	ab := w.tx.Bucket(bAudit)
	dropped := 0
	var changed []AuditHead
	_ = heads.ForEach(func(k, v []byte) error {
		var h AuditHead
		mustUnmarshal(k, v, &h)
		n := h.FirstSeq
		for ; n <= h.Seq; n++ {
			var e AuditEntry
			if !getJSON(ab, auditKey(h.Tenant, n), &e) || !e.Time.Before(p.Before) {
				break
			}
			del(ab, auditKey(h.Tenant, n))
			dropped++
		}
		if n != h.FirstSeq {
			h.FirstSeq = n
			changed = append(changed, h)
		}
		return nil
	})
	for i := range changed {
		putJSON(heads, tprefix(changed[i].Tenant), &changed[i])
	}
	w.audit("", ActionAuditRetention, "audit", OutcomeSuccess, map[string]string{
		"before": p.Before.UTC().Format(time.RFC3339), "dropped": itoa(dropped)})
	return dropped, nil
}

// AuditQuery filters a tenant's audit log.
type AuditQuery struct {
	Tenant string
	Action Action
	Actor  string // matches Actor.ID or Actor.Name
	Since  time.Time
	Until  time.Time
	After  uint64 // cursor: return entries with Seq > After
	Limit  int
}

// maxAuditScan bounds the entries one query page reads, so a selective filter
// over a long log returns a cursor instead of scanning everything.
const maxAuditScan = 100000

// Audit returns matching entries in sequence order and the cursor for the next
// page (0 at the end of the log).
func (r *Reader) Audit(q AuditQuery) ([]*AuditEntry, uint64) {
	if q.Limit <= 0 || q.Limit > 1000 {
		q.Limit = 100
	}
	if q.After == math.MaxUint64 { // After+1 would wrap to the start of the log
		return nil, 0
	}
	c := r.tx.Bucket(bAudit).Cursor()
	prefix := tprefix(q.Tenant)
	var out []*AuditEntry
	scanned := 0
	for k, v := c.Seek(auditKey(q.Tenant, q.After+1)); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var e AuditEntry
		mustUnmarshal(k, v, &e)
		if scanned++; scanned > maxAuditScan {
			return out, e.Seq - 1
		}
		if q.Action != "" && e.Action != q.Action ||
			q.Actor != "" && e.Actor.ID != q.Actor && e.Actor.Name != q.Actor ||
			!q.Since.IsZero() && e.Time.Before(q.Since) ||
			!q.Until.IsZero() && !e.Time.Before(q.Until) {
			continue
		}
		out = append(out, &e)
		if len(out) == q.Limit {
			next := e.Seq
			if k2, _ := c.Next(); k2 == nil || !bytes.HasPrefix(k2, prefix) {
				next = 0
			}
			return out, next
		}
	}
	return out, 0
}

// AuditHeads returns the tip of every chain.
func (r *Reader) AuditHeads() []AuditHead {
	var out []AuditHead
	_ = r.tx.Bucket(bAuditHeads).ForEach(func(k, v []byte) error {
		var h AuditHead
		mustUnmarshal(k, v, &h)
		out = append(out, h)
		return nil
	})
	return out
}

// ChainReport is the result of verifying one tenant's audit chain.
type ChainReport struct {
	Tenant   string `json:"tenant"`
	Entries  uint64 `json:"entries"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	OK       bool   `json:"ok"`
	// BrokenAt is the first sequence number where the chain fails, and Problem says how.
	BrokenAt uint64 `json:"broken_at,omitempty"`
	Problem  string `json:"problem,omitempty"`
}

// VerifyAudit walks tenant's chain from its oldest retained entry to its head:
// every entry's hash must match its content, link to its predecessor, carry the
// expected sequence number, and the last must be the recorded head. An edited,
// inserted or deleted entry breaks one of these.
func (r *Reader) VerifyAudit(tenant string) ChainReport {
	rep := ChainReport{Tenant: tenant}
	var head AuditHead
	if !getJSON(r.tx.Bucket(bAuditHeads), tprefix(tenant), &head) {
		rep.OK = true
		return rep
	}
	rep.FirstSeq, rep.LastSeq = head.FirstSeq, head.Seq
	fail := func(seq uint64, msg string) ChainReport {
		rep.BrokenAt, rep.Problem = seq, msg
		return rep
	}
	c := r.tx.Bucket(bAudit).Cursor()
	prefix := tprefix(tenant)
	want := head.FirstSeq
	prev := ""
	for k, v := c.Seek(auditKey(tenant, head.FirstSeq)); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var e AuditEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fail(want, "entry does not decode")
		}
		if len(k) != len(prefix)+8 || be64(k[len(prefix):]) != want || e.Seq != want {
			return fail(want, fmt.Sprintf("expected entry %d, found %d (entry missing or inserted)", want, e.Seq))
		}
		if want > head.Seq {
			return fail(want, "entry beyond the chain head (inserted)")
		}
		if want != head.FirstSeq && e.PrevHash != prev {
			return fail(want, "entry does not link to its predecessor")
		}
		if e.computeHash() != e.Hash {
			return fail(want, "entry content does not match its hash (modified)")
		}
		prev = e.Hash
		want++
		rep.Entries++
	}
	if want != head.Seq+1 {
		return fail(want, fmt.Sprintf("chain ends at %d but head is %d (entries deleted)", want-1, head.Seq))
	}
	// A chain that retention emptied (FirstSeq == Seq+1) has no last entry to
	// compare with its head.
	if head.Seq >= head.FirstSeq && prev != head.Hash {
		return fail(head.Seq, "last entry does not match the chain head")
	}
	rep.OK = true
	return rep
}
