package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/allsource/guard/fsm"
)

// Headers servers use among themselves.
const (
	hdrForwardedBy  = "X-Allsource-Forwarded-By"
	hdrForwardToken = "X-Allsource-Forward-Token"
	hdrClientIP     = "X-Allsource-Client-Ip"
	hdrJoinToken    = "X-Allsource-Join-Token"
	hdrRaftIndex    = "X-Raft-Index"
)

type handlerP func(w http.ResponseWriter, r *http.Request, p fsm.Principal)

// write runs h on the leader: a follower forwards the request (or, with
// ?redirect, answers 307 with the leader's address).
func (s *Server) write(h handlerP) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.node.IsLeader() {
			s.forward(w, r)
			return
		}
		p, err := s.authenticate(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r, p)
		s.auditOutcome(w, r, p)
	}
}

// leaderOnly forwards to the leader but leaves authentication to h (the join
// endpoint authenticates with the join token).
func (s *Server) leaderOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.node.IsLeader() {
			s.forward(w, r)
			return
		}
		h(w, r)
	}
}

// read serves a read at the requested consistency: stale answers from the
// local state; default answers on the leader; linearizable answers on the
// leader after confirming leadership and applying up to the commit index.
func (s *Server) read(h handlerP) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := r.URL.Query().Get("consistency")
		switch c {
		case "", "default", "linearizable":
			if !s.node.IsLeader() {
				s.forward(w, r)
				return
			}
			if c == "linearizable" {
				ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
				err := s.node.VerifyRead(ctx)
				cancel()
				if err != nil {
					s.writeError(w, r, err)
					return
				}
			}
		case "stale":
		default:
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "consistency must be stale, default or linearizable"))
			return
		}
		p, err := s.authenticate(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r, p)
		s.auditOutcome(w, r, p)
	}
}

var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te",
	"Trailer", "Transfer-Encoding", "Upgrade"}

// forward is the one component that sends a request to the leader.
func (s *Server) forward(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(hdrForwardedBy) != "" {
		// Already forwarded once and this node is not the leader either: the
		// cluster is electing. Do not bounce requests around.
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, CodeNotLeader, "leadership is changing; retry shortly"))
		return
	}
	leader, err := s.node.LeaderHTTP()
	if err != nil {
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, CodeNotLeader, "no leader is available; retry shortly"))
		return
	}
	target := s.cfg.Scheme + "://" + leader + r.URL.RequestURI()
	if _, ok := r.URL.Query()["redirect"]; ok {
		w.Header().Set("Location", target)
		writeJSON(w, http.StatusTemporaryRedirect, map[string]string{"leader": leader, "location": target})
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, target, r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out.Header = r.Header.Clone()
	for _, hh := range hopHeaders {
		out.Header.Del(hh)
	}
	out.ContentLength = r.ContentLength
	out.Header.Set(hdrForwardedBy, s.cfg.NodeID)
	out.Header.Set(hdrForwardToken, s.cfg.JoinToken)
	out.Header.Set(hdrClientIP, s.clientIP(r))
	out.Header.Set("X-Request-ID", requestID(r.Context()))
	resp, err := s.proxy.Do(out)
	if err != nil {
		s.log.Warn("forward to leader failed", "leader", leader, "err", err)
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the leader could not be reached; retry shortly"))
		return
	}
	defer resp.Body.Close()
	s.metrics.forwarded.Inc()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	for _, hh := range hopHeaders {
		w.Header().Del(hh)
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// fromPeer reports whether r was forwarded by a server of this cluster.
func (s *Server) fromPeer(r *http.Request) bool {
	tok := r.Header.Get(hdrForwardToken)
	return s.cfg.JoinToken != "" && tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.JoinToken)) == 1
}

// clientIP is the caller's address: the peer's claim for a forwarded request,
// otherwise the connection's remote address.
func (s *Server) clientIP(r *http.Request) string {
	if s.fromPeer(r) {
		if ip := r.Header.Get(hdrClientIP); net.ParseIP(ip) != nil {
			return ip
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// HashOperatorToken is how operator tokens are stored: SHA-256, hex. The
// tokens are long and random, so a fast hash is the right tool.
func HashOperatorToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// DevPrincipal is the synthetic caller of dev mode (DESIGN.md §4).
var DevPrincipal = fsm.Principal{Kind: fsm.PrincipalDev, ID: "dev-user", Name: "dev-user", Tenant: "dev-tenant", Role: "admin"}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// propose applies a command for principal p and returns its result value, or
// the business or raft error.
func (s *Server) propose(r *http.Request, p fsm.Principal, t fsm.CommandType, payload any) (*fsm.Result, error) {
	c, err := fsm.NewCommand(t, fsm.Header{Principal: p, Time: s.cfg.Now().UnixNano(),
		RequestID: requestID(r.Context()), IP: s.clientIP(r), UserAgent: truncate(r.UserAgent(), 256)}, payload)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res, err := s.node.Apply(r.Context(), c)
	s.metrics.applyLatency.WithLabelValues(t.String()).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// view runs fn on a consistent read view and sets X-Raft-Index from it.
func (s *Server) view(w http.ResponseWriter, fn func(rd *fsm.Reader) error) error {
	return s.fsm.View(func(rd *fsm.Reader) error {
		w.Header().Set(hdrRaftIndex, strconv.FormatUint(rd.AppliedIndex(), 10))
		return fn(rd)
	})
}

func setIndex(w http.ResponseWriter, idx uint64) {
	w.Header().Set(hdrRaftIndex, strconv.FormatUint(idx, 10))
}
