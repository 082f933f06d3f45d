package enforcement

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/fsm"
)

// Replica keeps an edge's enforcement view in step with the servers: it
// holds a watch stream (GET /v1/watch) to one server at a time, applies the
// snapshot and change frames to immutable Views, publishes each new View,
// and persists them (viewStore). After a disconnect it resumes from its last
// index on any server; only a server that no longer has that index in its
// window sends a full snapshot. With no server reachable it keeps the last
// view (and the pipeline keeps deciding from it).
type Replica struct {
	cfg   ReplicaConfig
	log   *slog.Logger
	store *viewStore
	http  *http.Client

	mu      sync.Mutex // serialises view transitions (stream frames, expiry)
	current atomic.Pointer[View]
	build   *viewBuilder // a snapshot being received
	buildIx uint64
	buildCl string
	resync  bool // the next connection asks for a full snapshot

	lastContact atomic.Int64 // unix nanos of the last frame from a server
	serverIndex atomic.Uint64
	applied     atomic.Uint64
	connected   atomic.Bool
	server      atomic.Pointer[string]
	leaderHTTP  atomic.Pointer[string]
	resyncs     atomic.Uint64
	resumes     atomic.Uint64
	frames      atomic.Uint64
	errors      atomic.Uint64
	savedAt     time.Time
}

// ReplicaConfig configures a Replica.
type ReplicaConfig struct {
	NodeID    string
	JoinToken string
	// DataDir holds the persisted view ("" keeps it only in memory).
	DataDir string
	// Scheme is http or https; TLS is the client side of mTLS.
	Scheme string
	TLS    *tls.Config
	// Candidates returns the servers' HTTP addresses to try, best first.
	Candidates func() []string
	// Discover, when set, runs before each round of connection attempts
	// (the edge refreshes its server list and gossip membership).
	Discover func(ctx context.Context)
	// Publish receives every new view (the pipeline's SetView).
	Publish func(*View)
	Clock   Clock
	Logger  *slog.Logger
	// BackoffMin and BackoffMax bound the jittered reconnect delay
	// (defaults 50 ms and 3 s).
	BackoffMin, BackoffMax time.Duration
}

// ReplicaStatus describes the replica for /health.
type ReplicaStatus struct {
	ViewIndex   uint64        `json:"view_index"`
	ServerIndex uint64        `json:"server_index"`
	Lag         uint64        `json:"lag"`
	Applied     uint64        `json:"server_applied_index"`
	Connected   bool          `json:"connected"`
	Server      string        `json:"server,omitempty"`
	LastContact time.Time     `json:"last_contact,omitzero"`
	Staleness   time.Duration `json:"-"`
	Resyncs     uint64        `json:"resyncs"`
	Resumes     uint64        `json:"resumes"`
	Frames      uint64        `json:"frames"`
	Errors      uint64        `json:"stream_errors"`
	Cluster     string        `json:"cluster,omitempty"`
}

// NewReplica loads the persisted view, if any, and publishes it.
func NewReplica(cfg ReplicaConfig) (*Replica, error) {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Scheme == "" {
		cfg.Scheme = "http"
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 50 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 3 * time.Second
	}
	if cfg.Publish == nil {
		cfg.Publish = func(*View) {}
	}
	r := &Replica{cfg: cfg, log: cfg.Logger.With("component", "replica")}
	// ResponseHeaderTimeout: a live server answers the watch request at once
	// (the hello frame, or a 503 while it catches up); one that accepts the
	// connection but never answers is frozen (SIGSTOP, a paused VM: its kernel
	// still completes the TCP handshake), and the edge must move on quickly.
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSClientConfig:       cfg.TLS,
		ResponseHeaderTimeout: 2 * time.Second,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       30 * time.Second,
		DisableCompression:    true,
	}
	r.http = &http.Client{Transport: tr}
	if cfg.DataDir != "" {
		st, err := openViewStore(cfg.DataDir, cfg.JoinToken)
		if err != nil {
			return nil, err
		}
		r.store = st
		v, contact, err := st.load(cfg.Clock.Now())
		if err != nil {
			return nil, fmt.Errorf("load persisted view: %w", err)
		}
		if v != nil {
			r.current.Store(v)
			if !contact.IsZero() {
				r.lastContact.Store(contact.UnixNano())
			}
			cfg.Publish(v)
			r.log.Info("enforcing from the persisted view", "index", v.Index, "tenants", v.counts.Tenants,
				"api_keys", v.counts.APIKeys, "last_contact", contact)
		}
	}
	return r, nil
}

// View returns the current view (nil before the first).
func (r *Replica) View() *View { return r.current.Load() }

// Status reports the replica's position and health.
func (r *Replica) Status() ReplicaStatus {
	st := ReplicaStatus{ServerIndex: r.serverIndex.Load(), Applied: r.applied.Load(), Connected: r.connected.Load(),
		Resyncs: r.resyncs.Load(), Resumes: r.resumes.Load(), Frames: r.frames.Load(), Errors: r.errors.Load()}
	if v := r.current.Load(); v != nil {
		st.ViewIndex, st.Cluster = v.Index, v.Cluster
	}
	if st.ServerIndex > st.ViewIndex {
		st.Lag = st.ServerIndex - st.ViewIndex
	}
	if s := r.server.Load(); s != nil && st.Connected {
		st.Server = *s
	}
	st.Staleness = r.Staleness()
	if lc := r.lastContact.Load(); lc != 0 {
		st.LastContact = time.Unix(0, lc).UTC()
	}
	return st
}

// Staleness is how long ago a server last confirmed the view; for an edge
// that never reached one, since it started (or its persisted contact).
func (r *Replica) Staleness() time.Duration {
	lc := r.lastContact.Load()
	if lc == 0 {
		return time.Duration(1<<63 - 1)
	}
	return r.cfg.Clock.Now().Sub(time.Unix(0, lc))
}

// LeaderHTTP returns the leader's HTTP address as the last server said.
func (r *Replica) LeaderHTTP() string {
	if s := r.leaderHTTP.Load(); s != nil {
		return *s
	}
	return ""
}

// Server returns the address of the server streaming to this edge ("" when
// disconnected).
func (r *Replica) Server() string {
	if s := r.server.Load(); s != nil && r.connected.Load() {
		return *s
	}
	return ""
}

// Run keeps a stream open until ctx ends.
func (r *Replica) Run(ctx context.Context) {
	backoff := r.cfg.BackoffMin
	failed := map[string]time.Time{} // servers whose stream failed lately: tried last
	for ctx.Err() == nil {
		if r.cfg.Discover != nil {
			r.cfg.Discover(ctx)
		}
		for _, addr := range lastTried(r.cfg.Candidates(), failed, time.Now()) {
			if ctx.Err() != nil {
				break
			}
			start := time.Now()
			err := r.stream(ctx, addr)
			r.connected.Store(false)
			if ctx.Err() != nil {
				break
			}
			if err != nil {
				r.errors.Add(1)
				failed[addr] = time.Now()
				r.log.Debug("watch stream ended", "server", addr, "err", err)
			}
			if time.Since(start) > 5*time.Second {
				backoff = r.cfg.BackoffMin
			}
		}
		// Jittered exponential backoff: a fleet does not reconnect in step.
		d := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
		case <-time.After(d):
		}
		backoff = min(2*backoff, r.cfg.BackoffMax)
	}
	if r.store != nil {
		r.mu.Lock()
		if lc := r.lastContact.Load(); lc != 0 {
			r.store.saveContact(time.Unix(0, lc))
		}
		r.store.close()
		r.mu.Unlock()
	}
}

// lastTried orders candidates for a round of connection attempts: servers
// whose stream failed within the last 10 s go last, in the order they came.
// Without it, a frozen server (the watchdog just gave up on it) could be
// tried first again, and hold the edge until its response timeout while
// writes it should see were being acknowledged elsewhere (test/faults: pause
// scenarios). Entries older than that are forgotten.
func lastTried(cands []string, failed map[string]time.Time, now time.Time) []string {
	const memory = 10 * time.Second
	for a, at := range failed {
		if now.Sub(at) > memory {
			delete(failed, a)
		}
	}
	out := make([]string, 0, len(cands))
	var later []string
	for _, a := range cands {
		if _, bad := failed[a]; bad {
			later = append(later, a)
		} else {
			out = append(out, a)
		}
	}
	return append(out, later...)
}

// Expire drops IP rules whose expiry has passed (call it from a ticker).
func (r *Replica) Expire() {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := r.current.Load()
	if v == nil {
		return
	}
	if nv := v.Expire(r.cfg.Clock.Now()); nv != v {
		r.publish(nv)
	}
}

func (r *Replica) publish(v *View) {
	r.current.Store(v)
	r.cfg.Publish(v)
}

// frame is any frame of the watch stream (see api/watch.go).
type frame struct {
	Type        string           `json:"type"`
	Index       uint64           `json:"index"`
	Cluster     string           `json:"cluster"`
	Count       int              `json:"count"`
	Records     []fsm.ViewRecord `json:"records"`
	Secrets     []fsm.ViewRecord `json:"secrets"`
	Node        string           `json:"node"`
	Role        string           `json:"role"`
	Leader      string           `json:"leader"`
	LeaderHTTP  string           `json:"leader_http"`
	Resync      bool             `json:"resync"`
	Latest      uint64           `json:"latest"`
	HeartbeatMS int64            `json:"heartbeat_ms"`
	Applied     uint64           `json:"applied"`
	Reason      string           `json:"reason"`
}

// errStatus is a refusal by the server.
type errStatus struct {
	code int
	msg  string
}

func (e *errStatus) Error() string { return fmt.Sprintf("watch refused: %d %s", e.code, e.msg) }

// ErrUnauthorized: the server refused the join token (or client certificate).
var ErrUnauthorized = errors.New("the server refused this edge's join token or certificate")

func (r *Replica) stream(ctx context.Context, addr string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	since, cluster := uint64(0), ""
	if v := r.current.Load(); v != nil && !r.resync {
		since, cluster = v.Index, v.Cluster
	}
	r.mu.Unlock()
	q := url.Values{"since": {strconv.FormatUint(since, 10)}, "node": {r.cfg.NodeID}}
	if cluster != "" {
		q.Set("cluster", cluster)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.cfg.Scheme+"://"+addr+"/v1/watch?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Allsource-Join-Token", r.cfg.JoinToken)
	resp, err := r.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode == http.StatusUnauthorized {
			r.log.Error("a server refused this edge: check -join-token (and the TLS certificate)", "server", addr)
			return ErrUnauthorized
		}
		return &errStatus{code: resp.StatusCode, msg: string(b)}
	}
	// Watchdog: a server that stops sending (not even heartbeats) is dead
	// to us; cancelling the request unblocks the read.
	idle := 5 * time.Second
	wd := time.AfterFunc(idle, cancel)
	defer wd.Stop()
	rd := bufio.NewReaderSize(resp.Body, 256<<10)
	for {
		line, err := rd.ReadBytes('\n')
		if err != nil {
			if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("stream idle or cancelled: %w", err)
			}
			return err
		}
		wd.Reset(idle)
		var f frame
		if err := json.Unmarshal(line, &f); err != nil {
			return fmt.Errorf("bad frame: %w", err)
		}
		r.frames.Add(1)
		r.lastContact.Store(r.cfg.Clock.Now().UnixNano())
		done, err := r.handle(addr, &f)
		if r.store != nil && rd.Buffered() == 0 {
			// Every frame that arrived together is written: one fsync
			// makes them all durable before the edge waits for more.
			r.mu.Lock()
			if serr := r.store.sync(); serr != nil {
				r.log.Error("persisting view changes failed", "err", serr)
			}
			r.mu.Unlock()
		}
		if f.Type == "hello" && f.HeartbeatMS > 0 {
			// Three missed heartbeats, at least 1 s: a server that froze
			// (SIGSTOP, a VM pause) keeps the TCP connection open, and
			// only this watchdog moves the edge to a live server.
			idle = max(3*time.Duration(f.HeartbeatMS)*time.Millisecond, time.Second)
			wd.Reset(idle)
		}
		if err != nil || done {
			return err
		}
	}
}

// handle applies one frame; done means the server closed the stream.
func (r *Replica) handle(addr string, f *frame) (done bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Clock.Now()
	switch f.Type {
	case "hello":
		r.server.Store(&addr)
		r.connected.Store(true)
		if f.LeaderHTTP != "" {
			lh := f.LeaderHTTP
			r.leaderHTTP.Store(&lh)
		}
		r.serverIndex.Store(f.Latest)
		r.build = nil
		if f.Resync {
			r.resyncs.Add(1)
		} else {
			r.resumes.Add(1)
		}
		if len(f.Secrets) > 0 && r.current.Load() != nil && !f.Resync {
			r.applyFrame(0, f.Secrets, now)
		}
		r.log.Debug("watching", "server", addr, "role", f.Role, "resync", f.Resync, "latest", f.Latest)
	case "snapshot":
		r.build = NewView().edit(r.cfg.JoinToken, now)
		r.buildIx, r.buildCl = f.Index, f.Cluster
	case "records":
		if r.build == nil {
			return true, errors.New("records outside a snapshot")
		}
		for i := range f.Records {
			if err := r.build.apply(&f.Records[i]); err != nil {
				r.log.Warn("skipping a view record", "err", err)
			}
		}
	case "snapshot_end":
		if r.build == nil || f.Index != r.buildIx {
			return true, errors.New("snapshot_end without its snapshot")
		}
		v := r.build.build(r.buildIx)
		v.Cluster = r.buildCl
		r.build = nil
		r.resync = false
		r.publish(v)
		r.log.Info("view resynchronised", "server", addr, "index", v.Index, "records", f.Count)
		if r.store != nil {
			if err := r.store.saveSnapshot(v); err != nil {
				r.log.Error("persisting the view failed", "err", err)
			}
		}
	case "changes":
		if v := r.current.Load(); v != nil && f.Index <= v.Index {
			return false, nil
		}
		r.applyFrame(f.Index, f.Records, now)
	case "secrets":
		r.applyFrame(0, f.Records, now)
	case "heartbeat":
		r.serverIndex.Store(f.Index)
		r.applied.Store(f.Applied)
		if v := r.current.Load(); v != nil && f.Index > v.Index && r.build == nil {
			nv := *v
			nv.Index = f.Index
			r.publish(&nv)
		}
		if r.store != nil && now.Sub(r.savedAt) > 5*time.Second {
			r.store.saveContact(now)
			r.savedAt = now
		}
	case "closing":
		if f.Reason == "reset" {
			r.resync = true
		}
		return true, nil
	}
	return false, nil
}

// applyFrame applies change records at index (0: secrets, not ordered).
func (r *Replica) applyFrame(index uint64, recs []fsm.ViewRecord, now time.Time) {
	v := r.current.Load()
	if v == nil {
		v = NewView()
	}
	b := v.edit(r.cfg.JoinToken, now)
	for i := range recs {
		if err := b.apply(&recs[i]); err != nil {
			r.log.Warn("skipping a view record", "err", err)
		}
	}
	idx := v.Index
	if index > idx {
		idx = index
	}
	nv := b.build(idx)
	nv.Cluster = v.Cluster
	r.publish(nv)
	if index > 0 {
		r.serverIndex.Store(max(r.serverIndex.Load(), index))
	}
	if r.store == nil {
		return
	}
	compact, err := r.store.appendFrame(index, recs)
	if err != nil {
		r.log.Error("persisting a view change failed", "err", err)
		return
	}
	if compact {
		if err := r.store.saveSnapshot(nv); err != nil {
			r.log.Error("compacting the persisted view failed", "err", err)
		}
	}
}
