package api

import (
	"net/http"
	"strings"
	"time"
)

// Health is the body of GET /health.
type Health struct {
	Status       string `json:"status"`
	NodeID       string `json:"node_id"`
	Role         string `json:"role"` // leader, follower, candidate
	Leader       string `json:"leader"`
	DevMode      bool   `json:"dev_mode"`
	AppliedIndex uint64 `json:"applied_index"`
	CommitIndex  uint64 `json:"commit_index"`
	LastIndex    uint64 `json:"last_index"`
	Term         uint64 `json:"term"`
	Version      string `json:"version"`
	LastContact  string `json:"last_contact,omitempty"`
	// KMS is the reachability of the configured KMS backends. A backend that
	// is down does not make the server unhealthy or unready: everything that
	// does not need it keeps working.
	KMS []KMSBackendStatus `json:"kms,omitempty"`
}

func (s *Server) health() Health {
	leader, _ := s.node.Leader()
	h := Health{Status: "ok", NodeID: s.cfg.NodeID, Role: strings.ToLower(s.node.State()), Leader: leader,
		DevMode: s.cfg.DevMode, AppliedIndex: s.node.AppliedIndex(), CommitIndex: s.node.CommitIndex(),
		LastIndex: s.node.LastIndex(), Term: s.node.Term(), Version: s.cfg.Version, KMS: s.kmsBackendStatus()}
	if leader == "" {
		h.Status = "no_leader"
	}
	if lc := s.node.LastContact(); !lc.IsZero() && !s.node.IsLeader() {
		h.LastContact = time.Since(lc).Round(time.Millisecond).String()
	}
	return h
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	h := s.health()
	setIndex(w, h.AppliedIndex)
	writeJSON(w, http.StatusOK, h)
}

// handleReady answers 200 once the node knows a leader and has applied what
// it knows to be committed, 503 otherwise (for load balancers).
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	h := s.health()
	setIndex(w, h.AppliedIndex)
	ready := h.Leader != "" && h.AppliedIndex+64 >= h.CommitIndex
	if !ready {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "health": h})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ready": true, "health": h})
}
