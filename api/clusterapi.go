package api

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/allsource/guard/fsm"
)

func (s *Server) members(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	if err := requireOperator(p); err != nil {
		s.writeError(w, r, err)
		return
	}
	srv, err := s.node.Servers()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := map[string]any{"servers": srv}
	if g := s.node.Gossip(); g != nil {
		out["gossip"] = g.Members()
	}
	setIndex(w, s.node.AppliedIndex())
	writeJSON(w, http.StatusOK, out)
}

// JoinRequest is what a new server sends to POST /v1/cluster/join.
type JoinRequest struct {
	NodeID     string `json:"node_id"`
	RaftAddr   string `json:"raft_addr"`
	HTTPAddr   string `json:"http_addr"`
	GossipAddr string `json:"gossip_addr,omitempty"`
}

// JoinResponse tells the new server whom to gossip with.
type JoinResponse struct {
	Leader      string   `json:"leader"`
	GossipPeers []string `json:"gossip_peers"`
}

var nodeIDPattern = fsm.ValidTenantID // same alphabet and length

// join admits a server. It needs the cluster's join token (or the operator's
// credential): nothing joins by just connecting.
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	if !s.joinAuthorized(r) {
		s.writeError(w, r, apiErr(http.StatusUnauthorized, CodeUnauthenticated, "a valid join token is required"))
		return
	}
	var req JoinRequest
	if err := decodeJSON(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := nodeIDPattern(req.NodeID); err != nil {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "node_id must be 1-64 characters of a-z, 0-9, '_' and '-'"))
		return
	}
	for _, a := range []struct{ n, v string }{{"raft_addr", req.RaftAddr}, {"http_addr", req.HTTPAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, a.n+" must be host:port"))
			return
		}
	}
	if err := s.node.AddNonvoter(req.NodeID, req.RaftAddr); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("server joined as non-voter", "id", req.NodeID, "raft", req.RaftAddr, "http", req.HTTPAddr)
	s.auditSystem(r, "", fsm.ActionClusterChanged, "cluster/"+req.NodeID, map[string]string{"op": "join", "raft_addr": req.RaftAddr})
	resp := JoinResponse{Leader: s.cfg.NodeID}
	if g := s.node.Gossip(); g != nil {
		for _, m := range g.Members() {
			resp.GossipPeers = append(resp.GossipPeers, m.Addr)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) joinAuthorized(r *http.Request) bool {
	if tok := r.Header.Get(hdrJoinToken); tok != "" && s.cfg.JoinToken != "" {
		return subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.JoinToken)) == 1
	}
	p, err := s.authenticate(r)
	return err == nil && p.Kind == fsm.PrincipalOperator
}

// auditSystem records a cluster-level event that no FSM command audits itself.
// It is best effort: the event already happened.
func (s *Server) auditSystem(r *http.Request, tenant string, a fsm.Action, resource string, meta map[string]string) {
	p := fsm.Principal{Kind: fsm.PrincipalSystem, ID: s.cfg.NodeID, Name: "cluster"}
	in := fsm.AuditInput{Tenant: tenant, Time: s.cfg.Now(), Action: a, Resource: resource, Outcome: fsm.OutcomeSuccess,
		Actor: fsm.Actor{Kind: p.Kind, ID: p.ID, Name: p.Name}, IP: s.clientIP(r), RequestID: requestID(r.Context()), Metadata: meta}
	if _, err := s.propose(r, p, fsm.CmdAppendAudit, &fsm.AppendAuditCmd{Entries: []fsm.AuditInput{in}}); err != nil {
		s.log.Warn("audit of cluster event failed", "action", a, "err", err)
	}
}

func (s *Server) auditAs(r *http.Request, p fsm.Principal, tenant string, a fsm.Action, resource string, meta map[string]string) {
	in := fsm.AuditInput{Tenant: tenant, Time: s.cfg.Now(), Action: a, Resource: resource, Outcome: fsm.OutcomeSuccess,
		Actor: fsm.Actor{Kind: p.Kind, ID: p.ID, Name: p.Name, Role: string(p.Role)}, IP: s.clientIP(r),
		UserAgent: truncate(r.UserAgent(), 256), RequestID: requestID(r.Context()), Metadata: meta}
	sys := fsm.Principal{Kind: fsm.PrincipalSystem, ID: s.cfg.NodeID}
	if _, err := s.propose(r, sys, fsm.CmdAppendAudit, &fsm.AppendAuditCmd{Entries: []fsm.AuditInput{in}}); err != nil {
		s.log.Warn("audit failed", "action", a, "err", err)
	}
}

func (s *Server) removeMember(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	id := r.PathValue("id")
	err := requireOperator(p)
	if err == nil && nodeIDPattern(id) != nil {
		err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "bad node id")
	}
	if err == nil {
		err = s.node.RemoveServer(id)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.auditAs(r, p, "", fsm.ActionClusterChanged, "cluster/"+id, map[string]string{"op": "remove"})
	w.WriteHeader(http.StatusNoContent)
}

type transferReq struct {
	ID string `json:"id,omitempty"`
}

func (s *Server) leadershipTransfer(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	var req transferReq
	err := requireOperator(p)
	if err == nil && r.ContentLength != 0 {
		err = decodeJSON(r, &req)
	}
	if err == nil {
		err = s.node.TransferLeadership(req.ID)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	leader, _ := s.node.Leader()
	writeJSON(w, http.StatusOK, map[string]string{"previous_leader": s.cfg.NodeID, "leader": leader})
}

func (s *Server) downloadSnapshot(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	if err := requireOperator(p); err != nil {
		s.writeError(w, r, err)
		return
	}
	rc, idx, err := s.node.SnapshotReader()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer rc.Close()
	s.auditAs(r, p, "", fsm.ActionSnapshotTaken, "cluster/snapshot", map[string]string{"index": strconv.FormatUint(idx, 10)})
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=allsource-%d.snap", idx))
	setIndex(w, idx)
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, rc)
}

// restoreSnapshot replaces the cluster state with an uploaded snapshot. The
// upload is spooled to disk and validated in full (format and checksum)
// before raft sees it, so a bad upload changes nothing.
func (s *Server) restoreSnapshot(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	if err := requireOperator(p); err != nil {
		s.writeError(w, r, err)
		return
	}
	tmp, err := os.CreateTemp("", "allsource-restore-*.snap")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	size, err := io.Copy(tmp, r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.writeError(w, r, apiErr(http.StatusRequestEntityTooLarge, CodeTooLarge, "snapshot is larger than the limit"))
			return
		}
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "could not read the upload"))
		return
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := fsm.ValidateSnapshot(tmp); err != nil {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, err.Error()))
		return
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.node.Restore(tmp, size); err != nil {
		s.writeError(w, r, err)
		return
	}
	s.auditAs(r, p, "", fsm.ActionSnapshotRestored, "cluster/snapshot", nil)
	writeJSON(w, http.StatusOK, map[string]any{"restored": true, "applied_index": s.node.AppliedIndex()})
}
