package api

import (
	"net/http"
	"strconv"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// tenantParam validates the {t} path value.
func tenantParam(r *http.Request) (string, error) {
	t := r.PathValue("t")
	if err := fsm.ValidTenantID(t); err != nil {
		return "", apiErr(http.StatusBadRequest, CodeInvalidArgument, err.Error())
	}
	return t, nil
}

// canSeeTenant: the operator sees every tenant, a tenant's members see their
// own; anyone else is told it does not exist.
func canSeeTenant(p fsm.Principal, t string) error {
	if p.IsOperator() || p.Tenant == t {
		return nil
	}
	return apiErr(http.StatusNotFound, CodeNotFound, "tenant not found")
}

func requireOperator(p fsm.Principal) error {
	if p.IsOperator() {
		return nil
	}
	return apiErr(http.StatusForbidden, CodeForbidden, "only the cluster operator may do this")
}

func (s *Server) createTenant(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	var req fsm.CreateTenantCmd
	if err := decodeJSON(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := requireOperator(p); err != nil {
		s.writeError(w, r, err)
		return
	}
	if e := req.Validate(); e != nil {
		s.writeError(w, r, e)
		return
	}
	res, err := s.propose(r, p, fsm.CmdCreateTenant, &req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusCreated, res.Value)
}

func (s *Server) listTenants(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	limit, err := queryLimit(r, 100, 1000)
	if c := r.URL.Query().Get("cursor"); err == nil && c != "" && fsm.ValidTenantID(c) != nil {
		err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "cursor is not valid")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var out struct {
		Tenants    []*fsm.Tenant `json:"tenants"`
		NextCursor string        `json:"next_cursor,omitempty"`
	}
	err = s.view(w, func(rd *fsm.Reader) error {
		if p.IsOperator() {
			out.Tenants, out.NextCursor = rd.Tenants(r.URL.Query().Get("cursor"), limit)
		} else if t, ok := rd.Tenant(p.Tenant); ok {
			out.Tenants = []*fsm.Tenant{t}
		}
		return nil
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if out.Tenants == nil {
		out.Tenants = []*fsm.Tenant{}
	}
	writeJSON(w, http.StatusOK, out)
}

func queryLimit(r *http.Request, def, max int) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, apiErr(http.StatusBadRequest, CodeInvalidArgument, "limit must be between 1 and "+strconv.Itoa(max))
	}
	return n, nil
}

func (s *Server) getTenant(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var ten *fsm.Tenant
	_ = s.view(w, func(rd *fsm.Reader) error { ten, _ = rd.Tenant(t); return nil })
	if ten == nil {
		s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, "tenant not found"))
		return
	}
	writeJSON(w, http.StatusOK, ten)
}

type updateTenantReq struct {
	Name   *string     `json:"name,omitempty"`
	Tier   *string     `json:"tier,omitempty"`
	Quotas *fsm.Quotas `json:"quotas,omitempty"`
}

func (s *Server) updateTenant(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	var req updateTenantReq
	if err == nil {
		err = decodeJSON(r, &req)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if !p.IsOperator() && (req.Tier != nil || req.Quotas != nil || !p.Role.Has(auth.PermManageTenants)) {
		s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "only the operator changes tiers and quotas; tenant admins may rename"))
		return
	}
	res, err := s.propose(r, p, fsm.CmdUpdateTenant, &fsm.UpdateTenantCmd{ID: t, Name: req.Name, Tier: req.Tier, Quotas: req.Quotas})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, res.Value)
}

func (s *Server) deleteTenant(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	if err == nil {
		err = requireOperator(p)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.propose(r, p, fsm.CmdDeleteTenant, &fsm.DeleteTenantCmd{ID: t})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) setTenantStatus(st fsm.TenantStatus) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, err := tenantParam(r)
		if err == nil {
			err = canSeeTenant(p, t)
		}
		if err == nil {
			err = requireOperator(p)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		res, err := s.propose(r, p, fsm.CmdSetTenantStatus, &fsm.SetTenantStatusCmd{ID: t, Status: st})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		setIndex(w, res.Index)
		writeJSON(w, http.StatusOK, res.Value)
	}
}

func (s *Server) getRateLimit(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	if err == nil && !hasPerm(p, auth.PermAdmin) {
		err = apiErr(http.StatusForbidden, CodeForbidden, "reading the rate limit needs the admin permission")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var lim *fsm.RateLimit
	_ = s.view(w, func(rd *fsm.Reader) error { lim, _ = rd.RateLimit(t); return nil })
	if lim == nil {
		s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, "tenant not found"))
		return
	}
	writeJSON(w, http.StatusOK, lim)
}

type rateLimitReq struct {
	Tier                 string         `json:"tier,omitempty"`
	RequestsPerMinute    int            `json:"requests_per_minute,omitempty"`
	Burst                int            `json:"burst,omitempty"`
	RouteCosts           map[string]int `json:"route_costs,omitempty"`
	MinRequestsPerMinute int            `json:"min_requests_per_minute,omitempty"`
	MaxRequestsPerMinute int            `json:"max_requests_per_minute,omitempty"`
}

func (s *Server) putRateLimit(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	var req rateLimitReq
	if err == nil {
		err = decodeJSON(r, &req)
	}
	if err == nil {
		err = requireOperator(p)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cmd := &fsm.SetRateLimitCmd{Tenant: t, Tier: req.Tier, RequestsPerMinute: req.RequestsPerMinute, Burst: req.Burst,
		RouteCosts: req.RouteCosts, MinRequestsPerMinute: req.MinRequestsPerMinute, MaxRequestsPerMinute: req.MaxRequestsPerMinute}
	// Validate a copy: Validate resolves a tier into figures, and Apply, which
	// validates again, refuses a tier given together with figures.
	check := *cmd
	if e := check.Validate(); e != nil {
		s.writeError(w, r, e)
		return
	}
	res, err := s.propose(r, p, fsm.CmdSetRateLimit, cmd)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, res.Value)
}
