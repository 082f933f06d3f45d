package api

import (
	"bufio"
	"crypto/subtle"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/fsm"
)

// Edge-facing endpoints (DESIGN.md §5). Edges prove they belong to the
// cluster with the join token in X-Allsource-Join-Token (compared in
// constant time) and, when the server runs mTLS, a client certificate signed
// by the cluster's CA. Anything else gets 401 and nothing more.
//
//	GET  /v1/watch?since=I&cluster=C&node=N  the enforcement view as NDJSON frames
//	GET  /v1/watch/servers                   servers (with roles) and gossip addresses
//	POST /v1/internal/audit                  an edge's audit batch (group commit)
//
// The watch stream is one JSON object per line:
//
//	{"type":"hello","node":…,"role":…,"leader":…,"leader_http":…,"resync":bool,"heartbeat_ms":N,"latest":I,"secrets":[…]}
//	{"type":"snapshot","index":J,"cluster":C}       ┐ only when resync: the full view at J,
//	{"type":"records","records":[…]} …              │ in frames of RecordsPerFrame records,
//	{"type":"snapshot_end","index":J,"count":N}     ┘ replacing whatever the edge held
//	{"type":"changes","index":I,"records":[…]}      records changed by the batch ending at I (> J or > since)
//	{"type":"secrets","records":[…]}                sealed secrets that changed (e.g. the pepper appeared)
//	{"type":"heartbeat","index":I,"applied":A,"time":ms}  the edge is current up to I
//	{"type":"closing","reason":"reset"|"overflow"|"no_leader"|"shutdown"}  the server ends the stream; reset: resync in full
//
// A record with "deleted":true removes the record (a deleted tenant takes its
// users, keys, rules and limit with it).

// Edge endpoint headers.
const (
	// HeaderJoinToken carries the join token on edge → server requests.
	HeaderJoinToken = hdrJoinToken
	// frame write timeout: a stream that cannot take a frame for this long
	// is dropped (its edge reconnects and resumes).
	watchWriteTimeout = 15 * time.Second
	// watchLeaderless: a follower that has not heard from a leader for this
	// long cannot vouch that its view is current; it sends its edges to
	// another server (and refuses new streams) until it does. Raft's own
	// followers give up on a leader after 400–800 ms (the heartbeat timeout);
	// at 3 s, an edge watching a follower cut off from the leader kept
	// enforcing a view without a revocation acknowledged meanwhile for up to
	// 4 s (the check runs on the heartbeat tick), beyond the 2 s the fault
	// suite allows (test/faults).
	watchLeaderless = time.Second
)

// servesCurrent reports whether this server can stand behind a stream: it
// leads, or it follows a leader it heard from recently.
func (s *Server) servesCurrent() bool {
	if s.node.IsLeader() {
		return true
	}
	id, _ := s.node.Leader()
	lc := s.node.LastContact()
	return id != "" && !lc.IsZero() && time.Since(lc) < watchLeaderless
}

// MountEdge mounts the edge endpoints backed by hub.
func (s *Server) MountEdge(hub *WatchHub) {
	s.Handle("GET /v1/watch", "GET /v1/watch", s.handleWatch(hub))
	s.Handle("GET /v1/watch/servers", "GET /v1/watch/servers", s.handleWatchServers)
	s.Handle("POST /v1/internal/audit", "POST /v1/internal/audit", s.leaderOnly(s.handleEdgeAudit))
}

// edgeAuthorized checks the join token in constant time and, on a server
// running mTLS, that the peer presented a certificate the CA verified.
func (s *Server) edgeAuthorized(r *http.Request) bool {
	tok := r.Header.Get(hdrJoinToken)
	if s.cfg.JoinToken == "" {
		// A dev-mode server (loopback only) has no join token: like the rest
		// of dev mode, it admits edges without one.
		return s.cfg.DevMode
	}
	if tok == "" {
		return false
	}
	if subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.JoinToken)) != 1 {
		return false
	}
	if s.cfg.Scheme == "https" && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return false
	}
	return true
}

func (s *Server) denyEdge(w http.ResponseWriter, r *http.Request) {
	s.writeError(w, r, apiErr(http.StatusUnauthorized, CodeUnauthenticated, "a valid join token is required"))
}

func (s *Server) handleWatch(hub *WatchHub) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { s.serveWatch(hub, w, r) }
}

func (s *Server) serveWatch(hub *WatchHub, w http.ResponseWriter, r *http.Request) {
	if !s.edgeAuthorized(r) {
		s.denyEdge(w, r)
		return
	}
	if hub.fsm.Load() == nil || !s.node.CaughtUp() || !s.servesCurrent() {
		// A restarted server rebuilding its state would judge an edge's
		// index against a partial state (and resync it for nothing).
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "this server is catching up with the cluster; retry shortly"))
		return
	}
	q := r.URL.Query()
	var since uint64
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "since must be a raft index"))
			return
		}
		since = n
	}
	edge := q.Get("node")
	if edge != "" && nodeIDPattern(edge) != nil {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "bad node id"))
		return
	}
	sub, resync, latest := hub.subscribe(since, q.Get("cluster"), s.node.LastIndex())
	defer hub.unsubscribe(sub)

	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		_, err := bw.Write(b)
		return err == nil
	}
	flush := func() bool {
		_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		if err := bw.Flush(); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	leaderID, _ := s.node.Leader()
	leaderHTTP, _ := s.node.LeaderHTTP()
	hello := map[string]any{"type": "hello", "node": s.cfg.NodeID, "role": strings.ToLower(s.node.State()),
		"leader": leaderID, "leader_http": leaderHTTP, "resync": resync, "latest": latest,
		"heartbeat_ms": hub.cfg.Heartbeat.Milliseconds(), "secrets": hub.currentSecrets()}
	if !write(encodeFrame(hello)) {
		return
	}
	watermark := since
	if resync {
		snap, err := hub.snapshot()
		if err != nil {
			s.log.Error("watch snapshot failed", "err", err, "edge", edge)
			write(encodeFrame(map[string]any{"type": "closing", "reason": "snapshot_failed"}))
			flush()
			return
		}
		for b := snap.body; len(b) > 0; { // in pieces, each with its own write deadline
			n := min(len(b), 1<<20)
			if !write(b[:n]) {
				return
			}
			b = b[n:]
		}
		if sec := hub.currentSecrets(); len(sec) > 0 {
			write(encodeFrame(map[string]any{"type": "records", "records": sec}))
		}
		if !write(encodeFrame(map[string]any{"type": "snapshot_end", "index": snap.index, "count": snap.count})) {
			return
		}
		watermark = snap.index
		s.log.Debug("edge resynchronised", "edge", edge, "index", snap.index, "records", snap.count)
	}
	if !flush() {
		return
	}
	tick := time.NewTicker(hub.cfg.Heartbeat)
	defer tick.Stop()
	for {
		frames, idx, closed, reason := hub.take(sub)
		for i, fr := range frames {
			if idx[i] != 0 && idx[i] <= watermark {
				continue // reflected by the snapshot
			}
			if !write(fr) {
				return
			}
			if idx[i] != 0 {
				watermark = idx[i]
			}
		}
		if closed {
			write(encodeFrame(map[string]any{"type": "closing", "reason": reason}))
			flush()
			return
		}
		if len(frames) > 0 && !flush() {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-sub.notify:
		case <-tick.C:
			if !s.servesCurrent() {
				write(encodeFrame(map[string]any{"type": "closing", "reason": "no_leader"}))
				flush()
				return
			}
			if l, ok := hub.drainedLatest(sub); ok && l > watermark {
				watermark = l
			}
			hb := map[string]any{"type": "heartbeat", "index": watermark, "applied": s.node.AppliedIndex(),
				"time": s.cfg.Now().UnixMilli()}
			if !write(encodeFrame(hb)) || !flush() {
				return
			}
		}
	}
}

// WatchServers is the body of GET /v1/watch/servers: where an edge can
// watch from (followers first) and whom to gossip with.
type WatchServers struct {
	Node    string           `json:"node"`
	Leader  string           `json:"leader"`
	Servers []cluster.Server `json:"servers"`
	Gossip  []string         `json:"gossip"`
}

func (s *Server) handleWatchServers(w http.ResponseWriter, r *http.Request) {
	if !s.edgeAuthorized(r) {
		s.denyEdge(w, r)
		return
	}
	out := WatchServers{Node: s.cfg.NodeID}
	out.Leader, _ = s.node.Leader()
	if srv, err := s.node.Servers(); err == nil {
		out.Servers = srv
	}
	if g := s.node.Gossip(); g != nil {
		for _, m := range g.Members() {
			if m.Meta.Role == "server" {
				out.Gossip = append(out.Gossip, m.Addr)
			}
		}
	}
	setIndex(w, s.node.AppliedIndex())
	writeJSON(w, http.StatusOK, out)
}

// handleEdgeAudit commits an edge's audit batch on the leader: one
// CmdAppendAudit for its entries and one CmdTouchAPIKeys for its aggregated
// key uses (group commit). Entries that fail validation are dropped and
// counted, so one bad entry cannot make an edge retry a batch forever.
func (s *Server) handleEdgeAudit(w http.ResponseWriter, r *http.Request) {
	if !s.edgeAuthorized(r) {
		s.denyEdge(w, r)
		return
	}
	var b fsm.EdgeAuditBatch
	if err := decodeJSON(r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := nodeIDPattern(b.Edge); err != nil {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "edge must be the edge's node id"))
		return
	}
	entries, uses, dropped := b.Valid()
	p := fsm.Principal{Kind: fsm.PrincipalSystem, ID: b.Edge, Name: "edge"}
	var idx uint64
	if len(entries) > 0 {
		res, err := s.propose(r, p, fsm.CmdAppendAudit, &fsm.AppendAuditCmd{Entries: entries})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		idx = res.Index
	}
	if len(uses) > 0 {
		res, err := s.propose(r, p, fsm.CmdTouchAPIKeys, &fsm.TouchAPIKeysCmd{Uses: uses})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		idx = res.Index
	}
	setIndex(w, idx)
	writeJSON(w, http.StatusOK, map[string]any{"accepted": len(entries), "key_uses": len(uses), "dropped": dropped, "index": idx})
}
