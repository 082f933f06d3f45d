package api

import (
	"net/http"
	"time"

	"github.com/allsource/guard/enforcement"
	"github.com/allsource/guard/fsm"
)

type ipRuleReq struct {
	CIDR      string `json:"cidr"`
	Action    string `json:"action"`
	Note      string `json:"note,omitempty"`
	ExpiresIn string `json:"expires_in,omitempty"`
}

// ipScope returns the tenant of an IP-rule route: "" for the global routes
// (operator only), {t} for a tenant's (its admin, or the operator).
func ipScope(r *http.Request, p fsm.Principal, global bool) (string, error) {
	if global {
		return "", requireOperator(p)
	}
	return tenantAdmin(r, p)
}

func (s *Server) addIPRule(global bool) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, err := ipScope(r, p, global)
		var req ipRuleReq
		if err == nil {
			err = decodeJSON(r, &req)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		pfx, perr := enforcement.ParseCIDR(req.CIDR)
		if perr != nil {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, perr.Error()))
			return
		}
		cmd := &fsm.AddIPRuleCmd{Tenant: t, CIDR: pfx.String(), Action: fsm.IPAction(req.Action), Note: req.Note}
		if req.ExpiresIn != "" {
			d, err := time.ParseDuration(req.ExpiresIn)
			if err != nil || d <= 0 || d > maxKeyLifetime {
				s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "expires_in must be a positive duration such as 24h"))
				return
			}
			cmd.ExpiresAt = s.cfg.Now().Add(d).UTC()
		}
		if cmd.ID, err = newObjectID(); err != nil {
			s.writeError(w, r, err)
			return
		}
		if e := cmd.Validate(); e != nil {
			s.writeError(w, r, e)
			return
		}
		res, err := s.propose(r, p, fsm.CmdAddIPRule, cmd)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		setIndex(w, res.Index)
		writeJSON(w, http.StatusCreated, res.Value)
	}
}

func (s *Server) listIPRules(global bool) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, err := ipScope(r, p, global)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var rules []*fsm.IPRule
		_ = s.view(w, func(rd *fsm.Reader) error { rules = rd.IPRules(t, 100000); return nil })
		if rules == nil {
			rules = []*fsm.IPRule{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"ip_rules": rules})
	}
}

func (s *Server) removeIPRule(global bool) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, err := ipScope(r, p, global)
		id := r.PathValue("id")
		if err == nil && fsm.ValidObjectID("ip rule", id) != nil {
			err = apiErr(http.StatusNotFound, CodeNotFound, "ip rule not found")
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		res, err := s.propose(r, p, fsm.CmdRemoveIPRule, &fsm.RemoveIPRuleCmd{Tenant: t, ID: id})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		setIndex(w, res.Index)
		w.WriteHeader(http.StatusNoContent)
	}
}
