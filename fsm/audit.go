package fsm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
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
	ActionKMSDecrypt         Action = "kms_decrypt" // a data read: the exfiltration detector counts it
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

// Stored audit records. The first byte says the form: '{' is the JSON record
// of the first releases (its hash is computeHashV1), auditRecordV2 the
// binary record:
//
//	canonical form (appendCanonical)   the bytes the chain hash covers
//	hash (32 bytes)                    sha256 of the canonical form
//
// Both forms decode (DecodeAuditRecord) and verify, so a state restored from
// an older snapshot keeps its chains; every new entry is binary.
const auditRecordV2 byte = 2

// appendCanonical appends the canonical binary form of e without its hash:
// the record version, then every field in declaration order (codec.go's
// primitives; metadata in key order), ending with the previous hash.
func (e *AuditEntry) appendCanonical(b []byte) []byte {
	return e.appendCanonicalID(b, []byte(e.ID))
}

// appendCanonicalID is appendCanonical with the id given as bytes (Apply
// hashes an entry before its id string exists).
func (e *AuditEntry) appendCanonicalID(b, id []byte) []byte {
	b = append(b, auditRecordV2)
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	b = appendStr(b, e.Tenant)
	b = binary.AppendUvarint(b, e.Seq)
	b = binary.AppendUvarint(b, e.Index)
	b = appendTime(b, e.Time)
	b = appendStr(b, string(e.Action))
	b = appendStr(b, string(e.Actor.Kind))
	b = appendStr(b, e.Actor.ID)
	b = appendStr(b, e.Actor.Name)
	b = appendStr(b, e.Actor.Role)
	b = appendStr(b, e.Resource)
	b = appendStr(b, string(e.Outcome))
	b = appendStr(b, e.IP)
	b = appendStr(b, e.UserAgent)
	b = appendStr(b, e.RequestID)
	b = appendStr(b, e.Error)
	b = appendMap(b, e.Metadata)
	return appendStr(b, e.PrevHash)
}

// computeHash returns the chain hash of e (which must have PrevHash set):
// the hex SHA-256 of its canonical form. It is the one definition of the
// hash of a binary record, for Apply and for verification alike.
func (e *AuditEntry) computeHash() string {
	var buf [512]byte
	sum := sha256.Sum256(e.appendCanonical(buf[:0]))
	return hex.EncodeToString(sum[:])
}

// computeHashV1 is the chain hash of a JSON record (stored before binary
// records existed): SHA-256 over the previous hash and the entry's JSON
// without its hash.
func (e *AuditEntry) computeHashV1() string {
	c := *e
	c.Hash = ""
	b, err := json.Marshal(&c)
	if err != nil {
		return "" // cannot match a stored hash
	}
	h := sha256.New()
	h.Write([]byte(e.PrevHash))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// appendAuditRecord appends e's stored binary record. e.Hash must be a hex
// SHA-256 (what computeHash returns).
func appendAuditRecord(b []byte, e *AuditEntry) []byte {
	b = e.appendCanonical(b)
	sum, err := hex.DecodeString(e.Hash)
	if err != nil || len(sum) != sha256.Size {
		panic(fmt.Sprintf("fsm: audit entry %s has a malformed hash", e.ID))
	}
	return append(b, sum...)
}

// DecodeAuditRecord decodes a stored audit record, binary or JSON. It never
// panics; a record that does not decode is an error (the state file is
// damaged).
func DecodeAuditRecord(v []byte) (*AuditEntry, error) {
	e := &AuditEntry{}
	_, err := decodeAuditRecord(v, e)
	return e, err
}

// decodeAuditRecord decodes v into e and returns its form (auditRecordV2, or
// '{' for JSON).
func decodeAuditRecord(v []byte, e *AuditEntry) (byte, error) {
	if len(v) == 0 {
		return 0, fmt.Errorf("%w: empty audit record", errBinary)
	}
	switch v[0] {
	case '{':
		if err := json.Unmarshal(v, e); err != nil {
			return 0, err
		}
		return '{', nil
	case auditRecordV2:
		if len(v) < 1+sha256.Size {
			return 0, fmt.Errorf("%w: audit record too short", errBinary)
		}
		body, sum := v[1:len(v)-sha256.Size], v[len(v)-sha256.Size:]
		// One string holds the record's text; the fields are its substrings.
		d := newSharedBdec(body)
		e.ID = d.str()
		e.Tenant = d.str()
		e.Seq = d.uvarint()
		e.Index = d.uvarint()
		e.Time = d.time()
		e.Action = Action(d.str())
		decodeActor(d, &e.Actor)
		e.Resource = d.str()
		e.Outcome = Outcome(d.str())
		e.IP = d.str()
		e.UserAgent = d.str()
		e.RequestID = d.str()
		e.Error = d.str()
		e.Metadata = d.strMap()
		e.PrevHash = d.str()
		if err := d.done(); err != nil {
			return 0, err
		}
		e.Hash = hex.EncodeToString(sum)
		return auditRecordV2, nil
	}
	return 0, fmt.Errorf("%w: unknown audit record form %d", errBinary, v[0])
}

// mustDecodeAudit decodes a stored record; one that does not decode is
// corruption, and answering from it would be worse than stopping.
func mustDecodeAudit(k, v []byte) *AuditEntry {
	e, err := DecodeAuditRecord(v)
	if err != nil {
		panic(fmt.Sprintf("fsm: corrupt audit record %q: %v", k, err))
	}
	return e
}

// auditRecordHash returns the hash stored in a record ("" when it does not
// decode).
func auditRecordHash(v []byte) string {
	if len(v) > sha256.Size && v[0] == auditRecordV2 {
		return hex.EncodeToString(v[len(v)-sha256.Size:])
	}
	var e struct {
		Hash string `json:"hash"`
	}
	if len(v) > 0 && v[0] == '{' && json.Unmarshal(v, &e) == nil {
		return e.Hash
	}
	return ""
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
	bs := w.batch
	head := bs.head(w.tx, in.Tenant)
	w.auditN++
	var idb [40]byte
	id := appendAuditID(idb[:0], w.index, w.auditN)
	e := bs.newEntry()
	*e = AuditEntry{
		Tenant: in.Tenant, Seq: head.Seq + 1,
		Index: w.index, Time: in.Time.UTC(), Action: in.Action, Actor: in.Actor, Resource: in.Resource,
		Outcome: in.Outcome, IP: in.IP, UserAgent: in.UserAgent, RequestID: in.RequestID,
		Error: in.Error, Metadata: in.Metadata, PrevHash: head.Hash,
	}
	// The key and the record go to the batch's arena: bolt keeps the slices
	// until the transaction ends, and one growing buffer is one allocation
	// for many entries.
	k0 := len(bs.arena)
	bs.arena = append(bs.arena, in.Tenant...)
	bs.arena = append(bs.arena, 0)
	bs.arena = binary.BigEndian.AppendUint64(bs.arena, e.Seq)
	r0 := len(bs.arena)
	bs.arena = e.appendCanonicalID(bs.arena, id)
	sum := sha256.Sum256(bs.arena[r0:])
	bs.arena = append(bs.arena, sum[:]...)
	key, rec := bs.arena[k0:r0:r0], bs.arena[r0:len(bs.arena):len(bs.arena)]
	// The id and the hash share the batch's text arena.
	var ihb [auditIDHashLen + 8]byte
	idHash := append(ihb[:0], id...)
	idHash = hex.AppendEncode(idHash, sum[:])
	both := bs.text.copy(idHash)
	e.ID, e.Hash = both[:len(id)], both[len(id):]
	if err := bs.auditBucket(w.tx).Put(key, rec); err != nil {
		panic(fmt.Sprintf("fsm: put audit %q: %v", key, err))
	}
	head.Seq, head.Hash = e.Seq, e.Hash
	w.changes = append(w.changes, Change{Index: w.index, Kind: ChangeAudit, Tenant: in.Tenant, Key: e.ID, Audit: e})
	return e
}

// auditIDHashLen is the length of an entry's id and hash: "%016x-%04x" (at
// least) and 64 hex digits.
const auditIDHashLen = 16 + 1 + 4 + 64

// appendAuditID appends an entry's id: its raft index and its position
// among the entries that index appended, "%016x-%04x".
func appendAuditID(b []byte, index uint64, n int) []byte {
	const digits = "0123456789abcdef"
	var x [16]byte
	for i := 15; i >= 0; i-- {
		x[i] = digits[index&0xf]
		index >>= 4
	}
	b = append(b, x[:]...)
	b = append(b, '-')
	t := len(x)
	for v := uint64(n); v > 0 || t > len(x)-4; v >>= 4 {
		t--
		x[t] = digits[v&0xf]
	}
	return append(b, x[t:]...)
}

// batchState is what one ApplyBatch shares between its commands: the audit
// chain heads it read or moved (each is written back once, when the batch
// ends, instead of read and written per entry) and the arena of the audit
// records it put.
type batchState struct {
	w        wtx            // the write context of the command being applied
	cmd      Command        // and the command
	auditCmd AppendAuditCmd // its payload when it appends audit entries
	slab     []AuditEntry   // room for the entries of the command being applied
	// heads is own, or, for a batch applied in the open transaction, the
	// heads of that transaction (commit.go), written when it commits.
	heads *chainHeads
	own   chainHeads
	arena []byte
	text  textArena // the strings of the entries appended
	audit *bolt.Bucket
}

// chainHeads are the chain heads read or moved since they were last stored.
type chainHeads struct {
	m     map[string]*AuditHead
	dirty []*AuditHead
}

// reset forgets the heads (they were stored, or their transaction ended).
func (hs *chainHeads) reset() {
	clear(hs.m)
	clear(hs.dirty)
	hs.dirty = hs.dirty[:0]
}

// newEntry returns room for an appended entry: from the slab reserveEntries
// made (one allocation for a command's entries), else its own.
func (bs *batchState) newEntry() *AuditEntry {
	if len(bs.slab) < cap(bs.slab) {
		bs.slab = bs.slab[:len(bs.slab)+1]
		return &bs.slab[len(bs.slab)-1]
	}
	return &AuditEntry{}
}

// reserveEntries makes room for a command's need entries: when the slab
// has less room left, it is replaced by one with room for ahead entries
// (at least need), so that the next audit commands of the batch share the
// allocation. The entries outlive the batch (Change.Audit), so the slab is
// never reused.
func (bs *batchState) reserveEntries(need, ahead int) {
	if cap(bs.slab)-len(bs.slab) < need {
		bs.slab = make([]AuditEntry, 0, max(need, ahead))
	}
}

// batchStates keeps the states of finished batches, with their arenas: once
// the transaction has ended, bolt holds no reference into them.
var batchStates = sync.Pool{New: func() any { return new(batchState) }}

// newBatchState returns an empty batch state; release gives it back.
func newBatchState() *batchState { return batchStates.Get().(*batchState) }

// reserve makes room for n more bytes in the arena.
func (bs *batchState) reserve(n int) { bs.arena = slices.Grow(bs.arena, n) }

// release returns bs to the pool; the batch's transaction must have ended.
// What outlives the batch (the entries of its slab, which changes point to)
// is dropped, what does not is kept for the next batch: the arena (unless it
// grew past 4 MiB), the heads map, the decoded payload's room.
func (bs *batchState) release() {
	arena := bs.arena[:0]
	if cap(arena) > 4<<20 {
		arena = nil
	}
	own := bs.own
	own.reset()
	entries := bs.auditCmd.Entries
	clear(entries)
	*bs = batchState{own: own, arena: arena, auditCmd: AppendAuditCmd{Entries: entries[:0]}}
	batchStates.Put(bs)
}

func (bs *batchState) auditBucket(tx *bolt.Tx) *bolt.Bucket {
	if bs.audit == nil {
		bs.audit = tx.Bucket(bAudit)
		// Entries are appended at the end of each tenant's range: fill the
		// pages instead of splitting them in half.
		bs.audit.FillPercent = 0.95
	}
	return bs.audit
}

// head returns tenant's chain head for update; flushHeads stores it.
func (bs *batchState) head(tx *bolt.Tx, tenant string) *AuditHead {
	hs := bs.chainHeads()
	if h := hs.m[tenant]; h != nil {
		return h
	}
	if hs.m == nil {
		hs.m = map[string]*AuditHead{}
	}
	h := &AuditHead{Tenant: tenant, FirstSeq: 1}
	getHead(tx.Bucket(bAuditHeads), tenant, h)
	hs.m[tenant] = h
	hs.dirty = append(hs.dirty, h)
	return h
}

func (bs *batchState) chainHeads() *chainHeads {
	if bs.heads == nil {
		bs.heads = &bs.own
	}
	return bs.heads
}

// Chain heads are stored binary (auditRecordV2, tenant, first seq, seq,
// hash), or as the JSON of earlier states.
func putHead(b *bolt.Bucket, h *AuditHead) {
	v := appendHead(make([]byte, 0, 16+len(h.Tenant)+len(h.Hash)), h)
	if err := b.Put(tprefix(h.Tenant), v); err != nil {
		panic(fmt.Sprintf("fsm: put audit head %q: %v", h.Tenant, err))
	}
}

// appendHead appends h's stored form.
func appendHead(v []byte, h *AuditHead) []byte {
	v = append(v, auditRecordV2)
	v = appendStr(v, h.Tenant)
	v = binary.AppendUvarint(v, h.FirstSeq)
	v = binary.AppendUvarint(v, h.Seq)
	return appendStr(v, h.Hash)
}

// getHead reads tenant's head into h; false when the chain has none.
func getHead(b *bolt.Bucket, tenant string, h *AuditHead) bool {
	var kb [80]byte // tenant ids are at most 64 bytes: no allocation per lookup
	k := append(append(kb[:0], tenant...), 0)
	v := b.Get(k)
	if v == nil {
		return false
	}
	*h = mustDecodeHead(k, v)
	return true
}

func mustDecodeHead(k, v []byte) AuditHead {
	var h AuditHead
	if len(v) > 0 && v[0] == auditRecordV2 {
		d := newSharedBdec(v[1:])
		h.Tenant = d.str()
		h.FirstSeq = d.uvarint()
		h.Seq = d.uvarint()
		h.Hash = d.str()
		if err := d.done(); err != nil {
			panic(fmt.Sprintf("fsm: corrupt audit head %q: %v", k, err))
		}
		return h
	}
	mustUnmarshal(k, v, &h)
	return h
}

// flushHeads stores the heads this batch moved and forgets them, so what
// reads the heads bucket next sees them.
func (bs *batchState) flushHeads(tx *bolt.Tx) {
	bs.arena = bs.chainHeads().flush(tx, bs.arena)
}

// flush stores the heads and forgets them. bolt keeps keys and values until
// tx ends: they are appended to arena, which is returned.
func (hs *chainHeads) flush(tx *bolt.Tx, arena []byte) []byte {
	if len(hs.dirty) == 0 {
		return arena
	}
	b := tx.Bucket(bAuditHeads)
	for _, h := range hs.dirty {
		k0 := len(arena)
		arena = append(append(arena, h.Tenant...), 0)
		v0 := len(arena)
		arena = appendHead(arena, h)
		if err := b.Put(arena[k0:v0:v0], arena[v0:len(arena):len(arena)]); err != nil {
			panic(fmt.Sprintf("fsm: put audit head %q: %v", h.Tenant, err))
		}
	}
	hs.reset()
	return arena
}

func auditKey(tenant string, seq uint64) []byte {
	return append(tprefix(tenant), u64(seq)...)
}

func applyAppendAudit(w *wtx, c *Command) (any, *Error) {
	// The inputs are copied into their entries: the batch's commands decode
	// into one payload. JSON decodes into a fresh one (it would merge into
	// the fields of a reused slice's elements).
	p := &w.batch.auditCmd
	if c.BinPayload != nil {
		p.Entries = p.Entries[:0]
	} else {
		*p = AppendAuditCmd{}
	}
	mustDecodePayload(c, p)
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
	// Room for the records: each is about its input plus 130 bytes of ids,
	// sequence numbers and hashes.
	w.batch.reserve(len(c.BinPayload) + len(c.Payload) + 160*len(p.Entries))
	// The batch's other commands are likely audit appends too: their
	// entries share the slab (bounded, as one retained entry keeps it).
	w.batch.reserveEntries(len(p.Entries), min(w.left, 32))
	w.batch.text.reserve(len(p.Entries) * auditIDHashLen)
	w.changes = slices.Grow(w.changes, max(len(p.Entries), w.left))
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
	w.batch.flushHeads(w.tx) // the walk below reads the heads bucket
	heads := w.tx.Bucket(bAuditHeads)
	ab := w.tx.Bucket(bAudit)
	dropped := 0
	var changed []AuditHead
	_ = heads.ForEach(func(k, v []byte) error {
		h := mustDecodeHead(k, v)
		n := h.FirstSeq
		for ; n <= h.Seq; n++ {
			k := auditKey(h.Tenant, n)
			v := ab.Get(k)
			if v == nil || !mustDecodeAudit(k, v).Time.Before(p.Before) {
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
		putHead(heads, &changed[i])
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
		e := mustDecodeAudit(k, v)
		if scanned++; scanned > maxAuditScan {
			return out, e.Seq - 1
		}
		if q.Action != "" && e.Action != q.Action ||
			q.Actor != "" && e.Actor.ID != q.Actor && e.Actor.Name != q.Actor ||
			!q.Since.IsZero() && e.Time.Before(q.Since) ||
			!q.Until.IsZero() && !e.Time.Before(q.Until) {
			continue
		}
		out = append(out, e)
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
		out = append(out, mustDecodeHead(k, v))
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
	if !getHead(r.tx.Bucket(bAuditHeads), tenant, &head) {
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
		form, err := decodeAuditRecord(v, &e)
		if err != nil {
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
		hash := e.computeHash()
		if form != auditRecordV2 {
			hash = e.computeHashV1()
		}
		if hash != e.Hash {
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
