package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

func canAudit(p fsm.Principal, t string) error {
	if err := canSeeTenant(p, t); err != nil {
		return err
	}
	if hasPerm(p, auth.PermAdmin) {
		return nil
	}
	return apiErr(http.StatusForbidden, CodeForbidden, "reading the audit log needs the admin permission")
}

func parseTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, apiErr(http.StatusBadRequest, CodeInvalidArgument, field+" must be an RFC 3339 time")
	}
	return t, nil
}

// AuditPage is the body of GET /v1/tenants/{t}/audit.
type AuditPage struct {
	Entries    []*fsm.AuditEntry `json:"entries"`
	NextCursor string            `json:"next_cursor,omitempty"`
}

func (s *Server) queryAudit(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canAudit(p, t)
	}
	s.auditPage(w, r, t, err)
}

// queryClusterAudit is GET /v1/audit: the cluster's own chain — operator
// actions, tenant lifecycle, and refusals that name no known tenant (a
// forged token, an unknown operator token, a login to a tenant that does
// not exist). Only the operator reads it.
func (s *Server) queryClusterAudit(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	var err error
	if !p.IsOperator() {
		err = apiErr(http.StatusForbidden, CodeForbidden, "the cluster's audit chain is the operator's")
	}
	s.auditPage(w, r, "", err)
}

func (s *Server) auditPage(w http.ResponseWriter, r *http.Request, t string, err error) {
	q := fsm.AuditQuery{Tenant: t}
	vals := r.URL.Query()
	if err == nil {
		q.Limit, err = queryLimit(r, 100, 1000)
	}
	if err == nil {
		q.Since, err = parseTime("since", vals.Get("since"))
	}
	if err == nil {
		q.Until, err = parseTime("until", vals.Get("until"))
	}
	if err == nil && vals.Get("cursor") != "" {
		q.After, err = strconv.ParseUint(vals.Get("cursor"), 10, 64)
		if err != nil {
			err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "cursor is not valid")
		}
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q.Action, q.Actor = fsm.Action(vals.Get("action")), vals.Get("actor")
	var page AuditPage
	_ = s.view(w, func(rd *fsm.Reader) error {
		var next uint64
		page.Entries, next = rd.Audit(q)
		if next != 0 {
			page.NextCursor = strconv.FormatUint(next, 10)
		}
		return nil
	})
	if page.Entries == nil {
		page.Entries = []*fsm.AuditEntry{}
	}
	writeJSON(w, http.StatusOK, page)
}

// verifyAudit walks the hash chains: the operator's call checks every chain
// (or ?tenant=), a tenant admin's checks its own tenant's.
func (s *Server) verifyAudit(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	tenant := r.URL.Query().Get("tenant")
	if !p.IsOperator() {
		if tenant == "" {
			tenant = p.Tenant
		}
		if err := canAudit(p, tenant); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	var out struct {
		OK     bool              `json:"ok"`
		Chains []fsm.ChainReport `json:"chains"`
	}
	out.OK = true
	_ = s.view(w, func(rd *fsm.Reader) error {
		var tenants []string
		if tenant != "" || !p.IsOperator() {
			tenants = []string{tenant}
		} else {
			for _, h := range rd.AuditHeads() {
				tenants = append(tenants, h.Tenant)
			}
		}
		for _, t := range tenants {
			rep := rd.VerifyAudit(t)
			out.OK = out.OK && rep.OK
			out.Chains = append(out.Chains, rep)
		}
		return nil
	})
	status := http.StatusOK
	if !out.OK {
		status = http.StatusConflict
	}
	writeJSON(w, status, out)
}

type retentionReq struct {
	Before    string `json:"before,omitempty"`
	OlderThan string `json:"older_than,omitempty"`
}

func (s *Server) auditRetention(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	var req retentionReq
	err := decodeJSON(r, &req)
	if err == nil {
		err = requireOperator(p)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var before time.Time
	switch {
	case req.Before != "" && req.OlderThan == "":
		before, err = parseTime("before", req.Before)
	case req.OlderThan != "" && req.Before == "":
		var d time.Duration
		d, err = time.ParseDuration(req.OlderThan)
		if err != nil || d <= 0 {
			err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "older_than must be a positive duration such as 720h")
		}
		before = s.cfg.Now().Add(-d)
	default:
		err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "give exactly one of before and older_than")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.propose(r, p, fsm.CmdAuditRetention, &fsm.AuditRetentionCmd{Before: before})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, map[string]any{"dropped": res.Value, "before": before})
}
