package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/fsm"
)

// The watch hub is the server side of the edges' replication stream
// (DESIGN.md §5): the state machine reports every applied batch to it
// (fsm.Options.OnApply); it resolves the changes that belong to the
// enforcement view into records once, encodes them once, keeps a bounded
// window of recent change events (by count and age) so that an edge that
// reconnects resumes from its last index without a full resync, and fans the
// events out to every connected edge.
//
// Ordering: an event carries the raft index of the batch that made it, and
// events are published in index order on raft's apply goroutine. A stream
// subscribes before it takes a view snapshot, so no change falls between the
// snapshot's index and the first event after it (events at or below the
// snapshot's index are skipped: the snapshot already reflects them).

// EdgeSecrets gives the hub the plaintext of the secrets edges need, already
// unwrapped in the server's memory. Both methods run on raft's apply
// goroutine and must answer from memory (no KMS call).
type EdgeSecrets interface {
	// APIKeyPepper returns the pepper of API-key hashes, or false while the
	// server does not hold it.
	APIKeyPepper() ([]byte, bool)
	// SigningSecret returns an HS256 signing key's secret, or false.
	SigningSecret(kid string) ([]byte, bool)
}

// WatchHubConfig configures a WatchHub. Zero values take the defaults.
type WatchHubConfig struct {
	// JoinToken seals the secrets sent to edges (fsm.SealViewSecret); a
	// dev-mode server has none, and its edges open them with "" too.
	JoinToken string
	// WindowEvents bounds the change events kept for resuming edges
	// (default 16384); WindowAge drops events older than this (default 15 min).
	WindowEvents int
	WindowAge    time.Duration
	// QueueLimit bounds the events queued for one slow stream (default 8192);
	// a stream that falls further behind is closed and its edge resumes.
	QueueLimit int
	// Heartbeat is the interval of heartbeat frames (default 250 ms). Edges
	// give up on a stream that is silent for 3 heartbeats (at least 1 s) and
	// resume from another server, so this bounds how long an edge keeps
	// watching a frozen or vanished server while writes it should see are
	// acknowledged elsewhere; it is also how often a follower checks that it
	// still hears from a leader (watchLeaderless).
	Heartbeat time.Duration
	// RecordsPerFrame is the number of records per snapshot frame (default 512).
	RecordsPerFrame int
	Logger          *slog.Logger
	Now             func() time.Time
}

// WatchEvent is one applied batch's changes to the enforcement view.
type WatchEvent struct {
	Index   uint64           `json:"index"`
	Records []fsm.ViewRecord `json:"records"`
	at      time.Time
	frame   []byte // the encoded "changes" line, shared by every stream
}

// WatchHub fans view changes out to edge streams. Safe for concurrent use.
type WatchHub struct {
	cfg     WatchHubConfig
	log     *slog.Logger
	fsm     atomic.Pointer[fsm.FSM]
	secrets atomic.Pointer[edgeSecretsBox]

	mu      sync.Mutex
	window  []*WatchEvent // oldest first
	base    uint64        // every event with index > base is in the window
	latest  uint64        // index of the newest event published
	subs    map[*watchSub]struct{}
	closed  bool
	sealed  []fsm.ViewRecord // current sealed secrets
	sealVer map[string]string

	snapMu sync.Mutex
	snap   *encodedSnapshot

	published, resyncs, resumes, overflows atomic.Uint64
}

type edgeSecretsBox struct{ s EdgeSecrets }

// NewWatchHub returns a hub; Attach it to the FSM once the FSM is open.
func NewWatchHub(cfg WatchHubConfig) *WatchHub {
	if cfg.WindowEvents <= 0 {
		cfg.WindowEvents = 16384
	}
	if cfg.WindowAge <= 0 {
		cfg.WindowAge = 15 * time.Minute
	}
	if cfg.QueueLimit <= 0 {
		cfg.QueueLimit = 8192
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 250 * time.Millisecond
	}
	if cfg.RecordsPerFrame <= 0 {
		cfg.RecordsPerFrame = 512
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &WatchHub{cfg: cfg, log: cfg.Logger.With("component", "watch"), subs: map[*watchSub]struct{}{},
		sealVer: map[string]string{}}
}

// Attach gives the hub the state machine it reads records from. Events
// before the FSM's current applied index are not in the window.
func (h *WatchHub) Attach(f *fsm.FSM) {
	h.mu.Lock()
	h.base = max(h.base, f.AppliedIndex())
	h.latest = max(h.latest, h.base)
	h.mu.Unlock()
	h.fsm.Store(f)
}

// SetSecrets installs the source of the secrets edges need; call
// SecretsChanged whenever a secret it holds appears or changes.
func (h *WatchHub) SetSecrets(s EdgeSecrets) {
	h.secrets.Store(&edgeSecretsBox{s: s})
	h.SecretsChanged()
}

// SecretsChanged re-reads the secrets and pushes any that changed to every
// stream: the pepper, and HS256 signing keys whose secret the server has
// unwrapped since their record was sent (the record is re-sent whole).
func (h *WatchHub) SecretsChanged() {
	recs := h.refreshSecrets()
	h.snapMu.Lock()
	h.snap = nil // a cached snapshot may lack a secret that is available now
	h.snapMu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	// Read and push under mu: publish holds it too, so this frame cannot
	// overtake (or be overtaken by) a change to the same records.
	recs = append(recs, h.refreshSigningLocked()...)
	if len(recs) == 0 {
		return
	}
	frame := encodeFrame(map[string]any{"type": "secrets", "records": recs})
	for s := range h.subs {
		s.pushRaw(frame, h.cfg.QueueLimit)
	}
}

// refreshSigningLocked returns the HS256 signing-key records whose sealed
// secret became available (or changed) since last sent.
func (h *WatchHub) refreshSigningLocked() []fsm.ViewRecord {
	f, box := h.fsm.Load(), h.secrets.Load()
	if f == nil || box == nil || box.s == nil {
		return nil
	}
	var out []fsm.ViewRecord
	_ = f.View(func(r *fsm.Reader) error {
		for _, k := range r.SigningKeys() {
			if k.Alg != "HS256" {
				continue
			}
			name := "signing/" + k.KID
			sec, ok := box.s.SigningSecret(k.KID)
			ver := ""
			if ok {
				ver = secretVersion(name, sec)
			}
			if h.sealVer[name] == ver {
				continue
			}
			rec, found := r.ViewRecord(fsm.Change{Kind: fsm.ChangeSigningKey, Key: k.KID})
			if !found || rec.SigningKey == nil {
				continue
			}
			h.sealSigningSecret(rec.SigningKey)
			h.sealVer[name] = ver
			out = append(out, rec)
		}
		return nil
	})
	return out
}

// refreshSecrets seals secrets whose value changed since the last call and
// returns their records.
func (h *WatchHub) refreshSecrets() []fsm.ViewRecord {
	box := h.secrets.Load()
	if box == nil || box.s == nil {
		return nil
	}
	p, ok := box.s.APIKeyPepper()
	if !ok || len(p) == 0 {
		return nil
	}
	ver := secretVersion(fsm.SecretPepper, p)
	h.mu.Lock()
	same := h.sealVer[fsm.SecretPepper] == ver
	h.mu.Unlock()
	if same {
		return nil
	}
	sealed, err := fsm.SealViewSecret(h.cfg.JoinToken, fsm.SecretPepper, p)
	if err != nil {
		h.log.Error("sealing the API-key pepper for edges failed", "err", err)
		return nil
	}
	rec := fsm.ViewRecord{Kind: fsm.ChangeSecret, Key: fsm.SecretPepper,
		Secret: &fsm.ViewSecret{Name: fsm.SecretPepper, Version: ver, Sealed: sealed}}
	h.mu.Lock()
	h.sealVer[fsm.SecretPepper] = ver
	h.sealed = []fsm.ViewRecord{rec}
	h.mu.Unlock()
	return []fsm.ViewRecord{rec}
}

// secretVersion fingerprints a secret value: a truncated SHA-256 of a 256-bit
// random secret reveals nothing usable about it.
func secretVersion(name string, v []byte) string {
	sum := sha256.Sum256(append([]byte("allsource-secret-value-version\x00"+name+"\x00"), v...))
	return hex.EncodeToString(sum[:8])
}

func (h *WatchHub) currentSecrets() []fsm.ViewRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]fsm.ViewRecord(nil), h.sealed...)
}

// OnApply is the fsm.Options.OnApply hook: it runs on raft's apply goroutine
// right after the batch ending at index committed to the state file, so a
// read now sees exactly that batch's result.
func (h *WatchHub) OnApply(index uint64, changes []fsm.Change) {
	f := h.fsm.Load()
	if f == nil {
		return
	}
	relevant := false
	for _, c := range changes {
		if fsm.InView(c.Kind) {
			relevant = true
			break
		}
	}
	if !relevant {
		return
	}
	type rk struct {
		kind        fsm.ChangeKind
		tenant, key string
	}
	seen := make(map[rk]bool, len(changes))
	recs := make([]fsm.ViewRecord, 0, len(changes))
	_ = f.View(func(r *fsm.Reader) error {
		// Walk backwards so a record changed twice in the batch is resolved
		// once, at its last position.
		for i := len(changes) - 1; i >= 0; i-- {
			c := changes[i]
			k := rk{c.Kind, c.Tenant, c.Key}
			if seen[k] {
				continue
			}
			seen[k] = true
			if rec, ok := r.ViewRecord(c); ok {
				if rec.SigningKey != nil && rec.SigningKey.Alg == "HS256" {
					h.sealSigningSecret(rec.SigningKey)
				}
				recs = append(recs, rec)
			}
		}
		return nil
	})
	for i, j := 0, len(recs)-1; i < j; i, j = i+1, j-1 {
		recs[i], recs[j] = recs[j], recs[i]
	}
	// A new API key may be the first made with a freshly created pepper.
	recs = append(recs, h.refreshSecrets()...)
	if len(recs) == 0 {
		return
	}
	h.publish(&WatchEvent{Index: index, Records: recs})
}

func (h *WatchHub) sealSigningSecret(k *fsm.ViewSigningKey) {
	box := h.secrets.Load()
	if box == nil || box.s == nil {
		return
	}
	sec, ok := box.s.SigningSecret(k.KID)
	if !ok {
		return
	}
	if sealed, err := fsm.SealViewSecret(h.cfg.JoinToken, "signing/"+k.KID, sec); err == nil {
		k.Sealed = sealed
	}
}

func (h *WatchHub) publish(ev *WatchEvent) {
	ev.at = h.cfg.Now()
	ev.frame = encodeFrame(map[string]any{"type": "changes", "index": ev.Index, "records": ev.Records})
	h.mu.Lock()
	defer h.mu.Unlock()
	if ev.Index <= h.latest {
		// Replayed on a restart before Attach saw the index; nothing new.
		return
	}
	h.window = append(h.window, ev)
	h.latest = ev.Index
	h.evictLocked(ev.at)
	for s := range h.subs {
		s.push(ev, h.cfg.QueueLimit)
	}
	h.published.Add(1)
}

func (h *WatchHub) evictLocked(now time.Time) {
	drop := 0
	for drop < len(h.window) && (len(h.window)-drop > h.cfg.WindowEvents || now.Sub(h.window[drop].at) > h.cfg.WindowAge) {
		h.base = h.window[drop].Index
		drop++
	}
	if drop > 0 {
		clear(h.window[:drop])
		h.window = h.window[drop:]
		if cap(h.window) > 4*h.cfg.WindowEvents {
			h.window = append([]*WatchEvent(nil), h.window...)
		}
	}
}

// OnRestore is the fsm.Options.OnRestore hook: the state was replaced, so
// the window no longer describes it. Every stream is closed with a reset and
// its edge resynchronises in full.
func (h *WatchHub) OnRestore(index uint64) {
	h.mu.Lock()
	clear(h.window)
	h.window = nil
	h.base, h.latest = index, index
	for s := range h.subs {
		s.close("reset")
		delete(h.subs, s)
	}
	h.mu.Unlock()
	h.snapMu.Lock()
	h.snap = nil
	h.snapMu.Unlock()
}

// Close ends every stream (their edges reconnect to another server) and
// refuses new ones: call it when the server shuts down, or the open streams
// would keep its HTTP server from finishing (http.Server.RegisterOnShutdown).
func (h *WatchHub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		s.close("shutdown")
		delete(h.subs, s)
	}
}

// WatchStats describes the hub for /metrics and tests.
type WatchStats struct {
	Streams   int    `json:"streams"`
	Window    int    `json:"window"`
	Base      uint64 `json:"base"`
	Latest    uint64 `json:"latest"`
	Published uint64 `json:"published"`
	Resyncs   uint64 `json:"resyncs"`
	Resumes   uint64 `json:"resumes"`
	Overflows uint64 `json:"overflows"`
}

// Stats returns counters: full resyncs served, resumes from the window, and
// streams closed for falling behind.
func (h *WatchHub) Stats() WatchStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return WatchStats{Streams: len(h.subs), Window: len(h.window), Base: h.base, Latest: h.latest,
		Published: h.published.Load(), Resyncs: h.resyncs.Load(), Resumes: h.resumes.Load(), Overflows: h.overflows.Load()}
}

// ---- subscriptions ----

type watchSub struct {
	notify chan struct{} // capacity 1
	q      [][]byte      // encoded frames, guarded by the hub's mu
	idx    []uint64      // index of each frame (0: not ordered, e.g. secrets)
	closed bool
	reason string
	hub    *WatchHub
}

func (s *watchSub) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *watchSub) push(ev *WatchEvent, limit int) {
	if s.closed {
		return
	}
	if len(s.q) >= limit {
		s.hub.overflows.Add(1)
		s.close("overflow")
		delete(s.hub.subs, s)
		return
	}
	s.q = append(s.q, ev.frame)
	s.idx = append(s.idx, ev.Index)
	s.signal()
}

func (s *watchSub) pushRaw(frame []byte, limit int) {
	if s.closed || len(s.q) >= limit {
		return
	}
	s.q = append(s.q, frame)
	s.idx = append(s.idx, 0)
	s.signal()
}

func (s *watchSub) close(reason string) {
	if !s.closed {
		s.closed, s.reason = true, reason
		s.signal()
	}
}

// subscribe registers a stream that resumes after index since. When the
// window covers (since, latest] the queued frames are those events and
// resync is false; otherwise the caller must send a snapshot first.
func (h *WatchHub) subscribe(since uint64, cluster string, lastIndex uint64) (sub *watchSub, resync bool, latest uint64) {
	sub = &watchSub{notify: make(chan struct{}, 1), hub: h}
	own := ""
	if f := h.fsm.Load(); f != nil {
		_ = f.View(func(r *fsm.Reader) error { own = r.ClusterID(); return nil })
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.evictLocked(h.cfg.Now())
	switch {
	case since == 0, cluster != own, since < h.base:
		resync = true
	case lastIndex > 0 && since > lastIndex:
		// The edge claims an index this server's log never reached: a
		// different history (a rebuilt cluster). Start over.
		resync = true
	default:
		for _, ev := range h.window {
			if ev.Index > since {
				sub.q = append(sub.q, ev.frame)
				sub.idx = append(sub.idx, ev.Index)
			}
		}
	}
	if h.closed {
		sub.close("shutdown")
		return sub, resync, h.latest
	}
	h.subs[sub] = struct{}{}
	if resync {
		h.resyncs.Add(1)
	} else {
		h.resumes.Add(1)
	}
	return sub, resync, h.latest
}

func (h *WatchHub) unsubscribe(s *watchSub) {
	h.mu.Lock()
	delete(h.subs, s)
	s.closed = true
	h.mu.Unlock()
}

// take removes the queued frames, or reports the subscription closed.
func (h *WatchHub) take(s *watchSub) (frames [][]byte, idx []uint64, closed bool, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	frames, idx = s.q, s.idx
	s.q, s.idx = nil, nil
	return frames, idx, s.closed, s.reason
}

// drainedLatest returns the newest published index when s has nothing
// queued: every event up to it has then been taken by s's stream.
func (h *WatchHub) drainedLatest(s *watchSub) (uint64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.latest, len(s.q) == 0 && !s.closed
}

// ---- snapshots ----

type encodedSnapshot struct {
	index   uint64
	cluster string
	count   int
	body    []byte // the "snapshot" frame and the "records" frames
}

// snapshot returns the encoded view at the newest index. One encoding is
// shared by every stream that resyncs before the next change.
func (h *WatchHub) snapshot() (*encodedSnapshot, error) {
	h.snapMu.Lock()
	defer h.snapMu.Unlock()
	h.mu.Lock()
	latest := h.latest
	h.mu.Unlock()
	if h.snap != nil && h.snap.index >= latest {
		return h.snap, nil
	}
	f := h.fsm.Load()
	if f == nil {
		return nil, errNotAttached
	}
	var es encodedSnapshot
	err := f.View(func(r *fsm.Reader) error {
		es.index, es.cluster = r.AppliedIndex(), r.ClusterID()
		var buf bytes.Buffer
		buf.Write(encodeFrame(map[string]any{"type": "snapshot", "index": es.index, "cluster": es.cluster}))
		batch := make([]fsm.ViewRecord, 0, h.cfg.RecordsPerFrame)
		flush := func() {
			if len(batch) > 0 {
				buf.Write(encodeFrame(map[string]any{"type": "records", "records": batch}))
				batch = batch[:0]
			}
		}
		err := r.EachViewRecord(func(rec fsm.ViewRecord) error {
			if rec.SigningKey != nil && rec.SigningKey.Alg == "HS256" {
				h.sealSigningSecret(rec.SigningKey)
			}
			batch = append(batch, rec)
			es.count++
			if len(batch) == cap(batch) {
				flush()
			}
			return nil
		})
		flush()
		es.body = buf.Bytes()
		return err
	})
	if err != nil {
		return nil, err
	}
	h.snap = &es
	return &es, nil
}

type hubError string

func (e hubError) Error() string { return string(e) }

const errNotAttached = hubError("watch hub is not attached to the state machine")

func encodeFrame(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("watch: encode frame: " + err.Error())
	}
	return append(b, '\n')
}
