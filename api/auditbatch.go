package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/fsm"
)

// The audit batcher is the group commit of audit entries that no
// state-changing command writes (authentication failures, permission denials,
// cross-tenant attempts, login failures, aggregated API-key use). Each server
// buffers them and proposes one raft entry per batch — flushed at AuditBatch
// entries or AuditFlush after the first — so a burst of failed logins costs a
// few raft round trips, not one each. A follower sends its batches to the
// leader's internal endpoint, authenticated by the cluster's join token; the
// leader proposes them as they are, so the follower learns when they are
// committed and retries otherwise.

// batchBody is one batch, as proposed or sent to the leader.
type batchBody struct {
	Entries       []fsm.AuditInput   `json:"entries,omitempty"`
	LoginFailures []fsm.LoginFailure `json:"login_failures,omitempty"`
	KeyUses       []fsm.KeyUse       `json:"key_uses,omitempty"`
}

func (b *batchBody) size() int { return len(b.Entries) + len(b.LoginFailures) + len(b.KeyUses) }

type batchItem struct {
	audit *fsm.AuditInput
	fail  *fsm.LoginFailure
}

type auditBatcher struct {
	s        *Server
	maxBatch int
	flush    time.Duration
	policy   fsm.LockoutPolicy
	in       chan batchItem
	sem      chan struct{}
	inflight sync.WaitGroup
	quit     chan struct{}
	loopDone chan struct{}
	once     sync.Once
	dropped  atomic.Uint64
	pending  atomic.Int64 // entries added and not yet delivered (or dropped)
	// committed counts entries the cluster acknowledged (benchmarks, tests).
	committed atomic.Uint64
}

const internalAuditPath = "/v1/internal/server-audit"

func newAuditBatcher(s *Server, cfg IdentityConfig) *auditBatcher {
	b := &auditBatcher{s: s, maxBatch: min(cfg.AuditBatch, 10000), flush: cfg.AuditFlush, policy: cfg.Lockout,
		in: make(chan batchItem, 1<<16), sem: make(chan struct{}, cfg.AuditInflight),
		quit: make(chan struct{}), loopDone: make(chan struct{})}
	go b.loop()
	return b
}

// Add buffers an audit entry. An entry that would fail validation is logged
// and dropped here, so it cannot make a whole batch fail in Apply.
func (b *auditBatcher) Add(in fsm.AuditInput) {
	if e := in.Validate(); e != nil {
		b.s.log.Error("dropping an invalid audit entry", "action", in.Action, "err", e)
		b.dropped.Add(1)
		return
	}
	b.enqueue(batchItem{audit: &in})
}

// AddLoginFailure buffers a refused login (audit entry and lockout count).
func (b *auditBatcher) AddLoginFailure(f fsm.LoginFailure) { b.enqueue(batchItem{fail: &f}) }

func (b *auditBatcher) enqueue(it batchItem) {
	b.pending.Add(1)
	select {
	case b.in <- it:
		return
	default:
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case b.in <- it:
	case <-t.C:
		b.pending.Add(-1)
		b.dropped.Add(1)
		b.s.log.Error("audit buffer full for a second; dropping an entry")
	}
}

// Committed returns how many entries the cluster has acknowledged.
func (b *auditBatcher) Committed() uint64 { return b.committed.Load() }

func (b *auditBatcher) loop() {
	defer close(b.loopDone)
	var cur batchBody
	var timer *time.Timer
	var tc <-chan time.Time
	add := func(it batchItem) {
		if it.audit != nil {
			cur.Entries = append(cur.Entries, *it.audit)
		} else {
			cur.LoginFailures = append(cur.LoginFailures, *it.fail)
		}
	}
	dispatch := func() {
		if timer != nil {
			timer.Stop()
			timer, tc = nil, nil
		}
		if cur.size() == 0 {
			return
		}
		body := cur
		cur = batchBody{}
		b.sem <- struct{}{}
		b.inflight.Add(1)
		go func() {
			defer func() { <-b.sem; b.inflight.Done(); b.pending.Add(-int64(body.size())) }()
			b.deliver(body)
		}()
	}
	for {
		select {
		case it := <-b.in:
			add(it)
			if cur.size() == 1 {
				timer = time.NewTimer(b.flush)
				tc = timer.C
			}
			if cur.size() >= b.maxBatch {
				dispatch()
			}
		case <-tc:
			timer, tc = nil, nil
			dispatch()
		case <-b.quit:
		drain:
			for {
				select {
				case it := <-b.in:
					add(it)
					if cur.size() >= b.maxBatch {
						dispatch()
					}
				default:
					break drain
				}
			}
			dispatch()
			b.inflight.Wait()
			return
		}
	}
}

// deliver sends a batch, retrying with backoff (up to 2 s between attempts)
// until the cluster commits it: elections, a leader restart or a partition
// delay audit entries, they do not lose them. While batches wait, the
// in-flight slots stay taken and new entries queue in the buffer; only a
// buffer that stays full drops entries (counted in
// allsource_audit_dropped_total). At shutdown a batch gets three attempts.
// A send that timed out may still commit, so a retry can store a batch twice
// (at least once, never lost silently).
func (b *auditBatcher) deliver(body batchBody) {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := b.send(ctx, body)
		cancel()
		if err == nil {
			return
		}
		if attempt == 8 || attempt%50 == 0 {
			b.s.log.Warn("audit batch not committed yet; still retrying", "entries", body.size(), "attempts", attempt, "err", err)
		}
		select {
		case <-time.After(backoff):
		case <-b.quit:
			if attempt >= 3 {
				b.dropped.Add(uint64(body.size()))
				b.s.log.Error("audit batch lost at shutdown", "entries", body.size(), "err", err)
				return
			}
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// send proposes the batch on the leader, or posts it to the leader.
func (b *auditBatcher) send(ctx context.Context, body batchBody) error {
	s := b.s
	if !s.node.IsLeader() {
		return b.post(ctx, body)
	}
	err := proposeChunks(ctx, s, body.Entries, &b.committed, func(c []fsm.AuditInput) (fsm.CommandType, any) {
		return fsm.CmdAppendAudit, &fsm.AppendAuditCmd{Entries: c}
	})
	if err == nil {
		err = proposeChunks(ctx, s, body.LoginFailures, &b.committed, func(c []fsm.LoginFailure) (fsm.CommandType, any) {
			return fsm.CmdLoginFailures, &fsm.LoginFailuresCmd{Failures: c, Policy: b.policy}
		})
	}
	if err == nil {
		err = proposeChunks(ctx, s, body.KeyUses, nil, func(c []fsm.KeyUse) (fsm.CommandType, any) {
			return fsm.CmdTouchAPIKeys, &fsm.TouchAPIKeysCmd{Uses: c}
		})
	}
	return err
}

// proposeChunks proposes items in commands of at most 10000, adding each
// committed chunk's length to committed (if not nil).
func proposeChunks[T any](ctx context.Context, s *Server, items []T, committed *atomic.Uint64, cmd func([]T) (fsm.CommandType, any)) error {
	for len(items) > 0 {
		n := min(len(items), 10000)
		t, payload := cmd(items[:n])
		if _, err := s.proposeSystem(ctx, t, payload); err != nil {
			return err
		}
		if committed != nil {
			committed.Add(uint64(n))
		}
		items = items[n:]
	}
	return nil
}

func (b *auditBatcher) post(ctx context.Context, body batchBody) error {
	s := b.s
	if s.cfg.JoinToken == "" {
		return fmt.Errorf("not the leader, and no join token to reach it with")
	}
	leader, err := s.node.LeaderHTTP()
	if err != nil {
		return err
	}
	raw, err := json.Marshal(&body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.Scheme+"://"+leader+internalAuditPath, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(hdrJoinToken, s.cfg.JoinToken)
	resp, err := s.proxy.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("leader answered %s", resp.Status)
	}
	b.committed.Add(uint64(len(body.Entries) + len(body.LoginFailures)))
	return nil
}

func (b *auditBatcher) close() {
	b.once.Do(func() { close(b.quit) })
	<-b.loopDone
}

// internalAudit is the leader's end of the followers' batches. Only servers
// of the cluster (holding the join token) may call it.
func (s *Server) internalAudit(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get(hdrJoinToken)
	if s.cfg.JoinToken == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.JoinToken)) != 1 {
		s.writeError(w, r, apiErr(http.StatusUnauthorized, CodeUnauthenticated, "a valid join token is required"))
		return
	}
	if s.id == nil {
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "identity is not enabled on this server"))
		return
	}
	var body batchBody
	if err := decodeJSON(r, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	for i := range body.Entries {
		if e := body.Entries[i].Validate(); e != nil {
			s.writeError(w, r, e)
			return
		}
	}
	if err := s.id.audit.send(r.Context(), body); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// keyUses aggregates API-key uses in memory between reports.
type keyUses struct {
	mu sync.Mutex
	m  map[string]*fsm.KeyUse
}

func newKeyUses() *keyUses { return &keyUses{m: map[string]*fsm.KeyUse{}} }

func (k *keyUses) record(id string, at time.Time) {
	k.mu.Lock()
	u := k.m[id]
	if u == nil {
		u = &fsm.KeyUse{ID: id}
		k.m[id] = u
	}
	u.Count++
	if at.After(u.LastUsed) {
		u.LastUsed = at
	}
	k.mu.Unlock()
}

func (k *keyUses) take() []fsm.KeyUse {
	k.mu.Lock()
	m := k.m
	k.m = map[string]*fsm.KeyUse{}
	k.mu.Unlock()
	out := make([]fsm.KeyUse, 0, len(m))
	for _, u := range m {
		out = append(out, *u)
	}
	return out
}
