// Package fsm is the replicated state machine of AllSource Guard: tenants, users,
// API keys, IP rules, rate-limit policies, signing keys, revocations, KMS key
// metadata and the audit log.
//
// Why it is shaped this way:
//   - Apply is deterministic. IDs, timestamps, salts, hashes and ciphertexts are
//     made by the proposer and carried in the command; Apply has no clock, no
//     randomness, no I/O beyond its own store, and never calls a KMS.
//   - Authorization is re-checked inside Apply from the principal in the command
//     header, so every replica makes the same decision and there is no gap between
//     the API's check and the state change.
//   - Business errors (duplicate username, suspended tenant) are returned in the
//     Result; the raft future's error is reserved for raft failures.
//   - The state lives in a bbolt file (one bucket per domain, one domain per file
//     here), so the audit log and a million users do not have to sit in RAM. The
//     file is not a source of truth: it is rebuilt on start from the raft
//     snapshot and log, so it is written without fsync.
//   - Batches of audit appends share a bbolt transaction that is committed
//     before anything reads (commit.go): a transaction per raft batch cost
//     more than the audit entries in it.
package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Bucket names, one per domain. Snapshots hold them in byte order.
var (
	bMeta        = []byte("meta")
	bTenants     = []byte("tenants")
	bLimits      = []byte("limits")
	bUsers       = []byte("users")        // tenant \x00 user id → User
	bUserNames   = []byte("user_names")   // tenant \x00 username → user id
	bAPIKeys     = []byte("api_keys")     // key id → APIKey (key ids are globally unique)
	bIPRules     = []byte("ip_rules")     // rule id → IPRule
	bSigningKeys = []byte("signing_keys") // kid → SigningKey
	bRevocations = []byte("revocations")  // jti → Revocation
	bKMSKeys     = []byte("kms_keys")     // name → KMSKey
	bSecrets     = []byte("secrets")      // name → wrapped secret
	bAudit       = []byte("audit")        // tenant \x00 seq(8) → AuditEntry
	bAuditHeads  = []byte("audit_heads")  // tenant \x00 → AuditHead (the cluster chain is the empty tenant)
	allBuckets   = [][]byte{bMeta, bTenants, bLimits, bUsers, bUserNames, bAPIKeys, bIPRules,
		bSigningKeys, bRevocations, bKMSKeys, bSecrets, bAudit, bAuditHeads}
)

var keyAppliedIndex = []byte("applied_index")

// Options configures an FSM.
type Options struct {
	// Logger receives the FSM's own log lines. Defaults to slog.Default().
	Logger *slog.Logger
	// OnApply, when set, is called after each applied batch with the changes it
	// made (the edge watch stream and caches hang off it), before AppliedIndex
	// and AppliedCh move past the batch: whoever waits for the index finds
	// what OnApply updated. It runs on raft's apply goroutine: it must not
	// block (nor wait for the batch's index).
	OnApply func(index uint64, changes []Change)
	// OnRestore, when set, is called after a snapshot was restored, before
	// AppliedIndex moves to it: every derived view must be rebuilt.
	OnRestore func(index uint64)
}

// FSM implements raft.FSM and raft.BatchingFSM.
type FSM struct {
	opts Options
	path string
	log  *slog.Logger

	mu sync.RWMutex // guards db against a swap during Restore
	db *bolt.DB

	// The open write transaction of grouped batches (commit.go). Lock
	// order: mu, then wmu.
	wmu        sync.Mutex
	open       *bolt.Tx
	openLogs   [][]*raft.Log // its batches, applied again if a later one panics
	openArenas []*batchState // their record arenas, which bolt references until it ends
	openN      int           // log entries in open
	openBytes  int           // and their commands' bytes
	// The chain heads the open transaction's batches moved and the index
	// of its last entry, stored when it commits.
	openHeads   chainHeads
	openApplied uint64
	openArena   []byte      // what bolt references of those until it ends
	pending     atomic.Bool // open != nil: readers must commit it first
	nearRemap   atomic.Bool // the file is close to the end of bolt's map
	flushTimer  *time.Timer
	flushDelay  time.Duration // flushDelay; tests lengthen it
	failed      error         // a commit failed: the file no longer holds what was applied
	broken      atomic.Bool   // failed != nil

	applied atomic.Uint64
	waitMu  sync.Mutex
	waiters map[uint64][]chan struct{}
}

var _ raft.BatchingFSM = (*FSM)(nil)

// Open creates the state file under dir. An existing file is discarded: the
// state is rebuilt from the raft snapshot and log, which are the durable record.
func Open(dir string, opts Options) (*FSM, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "state.db")
	for _, p := range []string{path, path + ".restore"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	db, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	f := &FSM{opts: opts, path: path, log: opts.Logger, db: db, waiters: map[uint64][]chan struct{}{},
		flushDelay: flushDelay}
	return f, nil
}

// initialMmap is how much of the state file bolt maps from the start: a
// remap (growth) waits for every open read (snapshots), so reserve early.
const initialMmap = 1 << 30

func openBolt(path string) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: 5 * time.Second,
		// The file is rebuilt from raft on start (raft's own log is fsynced):
		// no fsync per commit, nor when the file grows (bolt would truncate
		// it up and fsync all its dirty pages in the apply path every 16 MiB).
		NoSync:          true,
		NoGrowSync:      true,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		InitialMmapSize: initialMmap,
	})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// Close commits what was applied and closes the state file.
func (f *FSM) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.commitOpen()
	if f.flushTimer != nil {
		f.flushTimer.Stop()
	}
	if cerr := f.db.Close(); err == nil {
		err = cerr
	}
	return err
}

// Path returns the state file's path (tests look for plaintext in it) after
// committing what was applied, so the file holds it.
func (f *FSM) Path() string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	_ = f.commitOpen()
	return f.path
}

// AppliedIndex returns the index of the last applied log entry.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Apply implements raft.FSM for a single entry.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed entries in one bolt transaction, shared with
// the batches before it when they are all audit appends (commit.go).
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	if len(logs) == 0 {
		return out
	}
	last := logs[len(logs)-1].Index
	changes := f.apply(logs, out)
	// The hooks first, then the index: whoever waited for the index (a
	// follower's catch-up, a linearizable read) finds the caches the hooks
	// keep already up to date with it.
	if f.opts.OnApply != nil && len(changes) > 0 {
		f.opts.OnApply(last, changes)
	}
	f.setApplied(last)
	return out
}

// applyTx applies logs in tx, writes the chain heads they moved and the
// applied index, and returns their changes. bs's arena holds records bolt
// references until tx ends: the caller releases it then.
func (f *FSM) applyTx(tx *bolt.Tx, bs *batchState, logs []*raft.Log, out []any) []Change {
	var changes []Change
	// The commands of a batch share one write context and one decoded
	// command (reset for each) and append their changes to one slice.
	w := &bs.w
	// The results share one allocation.
	var results []Result
	// The text arena's chunks are sized for the rest of the batch's audit
	// appends: their commands and, for each, about one entry's id and hash.
	rest := 0
	for _, l := range logs {
		rest += textSize(l)
	}
	for i, l := range logs {
		bs.text.want = rest
		rest -= textSize(l)
		if l.Type != raft.LogCommand {
			continue
		}
		if results == nil {
			results = make([]Result, len(logs)-i)
		}
		*w = wtx{tx: tx, index: l.Index, batch: bs, changes: changes, left: len(logs) - i}
		r := &results[len(results)-(len(logs)-i)]
		f.applyOne(w, &bs.cmd, l, r)
		out[i] = r
		changes = w.changes
	}
	*w = wtx{}
	last := logs[len(logs)-1].Index
	if bs.heads == &f.openHeads {
		// The open transaction stores its heads and applied index when it
		// commits: nothing reads them before (commit.go).
		f.openApplied = last
		return changes
	}
	bs.flushHeads(tx)
	bs.arena = putApplied(tx, bs.arena, last)
	return changes
}

// textSize is how much of a batch's text arena l takes, about: its command
// and one entry's id and hash if it is an audit append in the binary
// envelope (the one decoded into the arena), else nothing.
func textSize(l *raft.Log) int {
	if l.Type != raft.LogCommand || commandType(l.Data) != CmdAppendAudit {
		return 0
	}
	return len(l.Data) + auditIDHashLen
}

// putApplied stores the applied index. bolt keeps the value until tx ends:
// it is appended to arena, which is returned.
func putApplied(tx *bolt.Tx, arena []byte, index uint64) []byte {
	a0 := len(arena)
	arena = binary.BigEndian.AppendUint64(arena, index)
	if err := tx.Bucket(bMeta).Put(keyAppliedIndex, arena[a0:len(arena):len(arena)]); err != nil {
		panic(fmt.Sprintf("fsm: apply batch ending at %d: %v", index, err))
	}
	return arena
}

// applyOne applies one entry, decoded into c, and stores its result in r.
func (f *FSM) applyOne(w *wtx, c *Command, l *raft.Log, r *Result) {
	if err := decodeCommand(l.Data, c, &w.batch.text); err != nil {
		panic(fmt.Sprintf("fsm: entry %d: %v", l.Index, err))
	}
	w.hdr = &c.Header
	h, ok := handlers(c.Type)
	if !ok {
		if c.Flags&FlagIgnorable != 0 {
			f.log.Warn("skipping unknown ignorable command", "type", c.Type, "index", l.Index)
			*r = Result{Index: l.Index}
			return
		}
		panic(fmt.Sprintf("fsm: entry %d: unknown command type %d", l.Index, c.Type))
	}
	v, berr := h(w, c)
	*r = Result{Index: l.Index, Value: v, Err: berr}
}

// Snapshot captures a read transaction: a cheap point-in-time view that Persist
// streams while Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.commitOpen(); err != nil {
		return nil, err
	}
	tx, err := f.db.Begin(false)
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{tx: tx}, nil
}

// Restore builds a fresh store from a snapshot stream and swaps it in. A stream
// that fails validation leaves the current state untouched.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp := f.path + ".restore"
	_ = os.Remove(tmp)
	ndb, err := openBolt(tmp)
	if err != nil {
		return err
	}
	if err := loadSnapshot(ndb, rc); err != nil {
		ndb.Close()
		os.Remove(tmp)
		return err
	}
	var idx uint64
	_ = ndb.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bMeta).Get(keyAppliedIndex); len(v) == 8 {
			idx = be64(v)
		}
		return nil
	})
	if err := ndb.Close(); err != nil {
		return err
	}
	f.mu.Lock()
	f.discardOpen() // the snapshot replaces it
	if err := f.db.Close(); err != nil {
		f.mu.Unlock()
		return err
	}
	if err := os.Rename(tmp, f.path); err != nil {
		f.mu.Unlock()
		return err
	}
	db, err := openBolt(f.path)
	if err != nil {
		f.mu.Unlock()
		return err
	}
	f.db = db
	f.nearRemap.Store(false)
	f.mu.Unlock()
	f.log.Info("restored state from snapshot", "applied_index", idx)
	if f.opts.OnRestore != nil {
		f.opts.OnRestore(idx)
	}
	f.setApplied(idx)
	return nil
}

func loadSnapshot(db *bolt.DB, r io.Reader) error {
	const batch = 20000
	var tx *bolt.Tx
	var cur *bolt.Bucket
	var curName []byte
	n := 0
	begin := func() error {
		var err error
		if tx, err = db.Begin(true); err != nil {
			return err
		}
		if curName != nil {
			cur, err = tx.CreateBucketIfNotExists(curName)
		}
		return err
	}
	if err := begin(); err != nil {
		return err
	}
	err := readSnapshot(r, func(name []byte) error {
		curName = append([]byte(nil), name...)
		var err error
		cur, err = tx.CreateBucketIfNotExists(curName)
		return err
	}, func(k, v []byte) error {
		if err := cur.Put(k, v); err != nil {
			return err
		}
		if n++; n%batch == 0 {
			if err := tx.Commit(); err != nil {
				return err
			}
			return begin()
		}
		return nil
	})
	if err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// WriteSnapshotTo streams the current state in snapshot format (tests compare
// replicas byte for byte with it).
func (f *FSM) WriteSnapshotTo(w io.Writer) error {
	return f.View(func(r *Reader) error { return writeSnapshot(r.tx, w) })
}

func (f *FSM) setApplied(idx uint64) {
	f.applied.Store(idx)
	f.waitMu.Lock()
	for i, chs := range f.waiters {
		if i <= idx {
			for _, ch := range chs {
				close(ch)
			}
			delete(f.waiters, i)
		}
	}
	f.waitMu.Unlock()
}

// AppliedCh returns a channel closed once index idx has been applied.
func (f *FSM) AppliedCh(idx uint64) <-chan struct{} {
	ch := make(chan struct{})
	f.waitMu.Lock()
	defer f.waitMu.Unlock()
	if f.applied.Load() >= idx {
		close(ch)
		return ch
	}
	f.waiters[idx] = append(f.waiters[idx], ch)
	return ch
}

// View runs fn with a consistent read-only view of the state.
func (f *FSM) View(fn func(r *Reader) error) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if err := f.commitOpen(); err != nil {
		return err
	}
	return f.db.View(func(tx *bolt.Tx) error { return fn(&Reader{tx: tx}) })
}

// Reader is a read-only view of the state. Domain files add typed accessors.
type Reader struct{ tx *bolt.Tx }

// AppliedIndex returns the index the view reflects.
func (r *Reader) AppliedIndex() uint64 {
	if v := r.tx.Bucket(bMeta).Get(keyAppliedIndex); len(v) == 8 {
		return be64(v)
	}
	return 0
}

// wtx is the write context of one command inside a batch transaction.
type wtx struct {
	tx      *bolt.Tx
	index   uint64
	hdr     *Header
	changes []Change
	auditN  int         // audit entries appended by this command, for their ids
	left    int         // entries of the batch from this one on
	batch   *batchState // shared by the commands of one ApplyBatch
}

func (w *wtx) reader() *Reader { return &Reader{tx: w.tx} }

func (w *wtx) changed(kind ChangeKind, tenant, key string, deleted bool) {
	w.changes = append(w.changes, Change{Index: w.index, Kind: kind, Tenant: tenant, Key: key, Deleted: deleted})
}

// ChangeKind names the kind of record a Change touched.
type ChangeKind string

const (
	ChangeTenant     ChangeKind = "tenant"
	ChangeLimit      ChangeKind = "rate_limit"
	ChangeUser       ChangeKind = "user"
	ChangeAPIKey     ChangeKind = "api_key"
	ChangeIPRule     ChangeKind = "ip_rule"
	ChangeSigningKey ChangeKind = "signing_key"
	ChangeRevocation ChangeKind = "revocation"
	ChangeKMSKey     ChangeKind = "kms_key"
	ChangeOperator   ChangeKind = "operator"
	ChangeAudit      ChangeKind = "audit"
)

// Change says which record an applied command created, updated or deleted.
type Change struct {
	Index   uint64     `json:"index"`
	Kind    ChangeKind `json:"kind"`
	Tenant  string     `json:"tenant,omitempty"`
	Key     string     `json:"key"`
	Deleted bool       `json:"deleted,omitempty"`
	// Audit is the appended entry of a ChangeAudit, for in-process consumers
	// (the leader's detectors read it instead of decoding it back from the
	// store). Nobody may modify it.
	Audit *AuditEntry `json:"-"`
}
