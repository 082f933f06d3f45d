package api

import (
	"net/http"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/threat"
)

// Threat-detection endpoints (DESIGN.md §7):
//
//	GET  /v1/tenants/{t}/anomalies?kind=&since=&cursor=&limit=   tenant admin, operator
//	GET  /v1/tenants/{t}/anomalies/{id}                          tenant admin, operator
//	POST /v1/tenants/{t}/anomalies/{id}/undo                     tenant admin, operator
//	GET  /v1/anomalies, GET /v1/anomalies/{id}, POST …/{id}/undo the cluster chain's (operator)
//	GET/PUT /v1/tenants/{t}/threat-policy                        tenant admin (global IP blocks: operator)
//	GET/PUT /v1/threat-policy                                    the cluster's policy (operator)
//	POST /v1/internal/usage                                      edges' usage reports (join token)

// ThreatHooks connects the threat endpoints to the server's components.
type ThreatHooks struct {
	// Usage takes an edge's usage report on the leader (nil: 404).
	Usage func(threat.UsageReport) error
}

// MountThreat mounts the threat-detection endpoints.
func (s *Server) MountThreat(h ThreatHooks) {
	for _, scope := range []struct {
		prefix string
		tenant func(r *http.Request) (string, error)
	}{{"/v1/tenants/{t}", tenantParam}, {"/v1", func(*http.Request) (string, error) { return "", nil }}} {
		p := scope.prefix
		s.Handle("GET "+p+"/anomalies", "GET "+p+"/anomalies", s.read(s.listAnomalies(scope.tenant)))
		s.Handle("GET "+p+"/anomalies/{id}", "GET "+p+"/anomalies/{id}", s.read(s.getAnomaly(scope.tenant)))
		s.Handle("POST "+p+"/anomalies/{id}/undo", "POST "+p+"/anomalies/{id}/undo", s.write(s.undoAnomaly(scope.tenant)))
		s.Handle("GET "+p+"/threat-policy", "GET "+p+"/threat-policy", s.read(s.getThreatPolicy(scope.tenant)))
		s.Handle("PUT "+p+"/threat-policy", "PUT "+p+"/threat-policy", s.write(s.putThreatPolicy(scope.tenant)))
	}
	if h.Usage != nil {
		s.Handle("POST "+threat.UsagePath, "POST "+threat.UsagePath, s.leaderOnly(s.handleUsage(h.Usage)))
	}
}

// canSeeAnomalies: the operator for any chain, a tenant admin for its own.
func canSeeAnomalies(p fsm.Principal, tenant string) error {
	if tenant == "" {
		return requireOperator(p)
	}
	return canAudit(p, tenant)
}

// AnomalyPage is the body of GET …/anomalies.
type AnomalyPage struct {
	Anomalies  []*fsm.Anomaly `json:"anomalies"`
	NextCursor string         `json:"next_cursor,omitempty"`
}

func (s *Server) listAnomalies(tenantOf func(*http.Request) (string, error)) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, err := tenantOf(r)
		if err == nil {
			err = canSeeAnomalies(p, t)
		}
		q := fsm.AnomalyQuery{Tenant: t, Kind: fsm.AnomalyKind(r.URL.Query().Get("kind")), After: r.URL.Query().Get("cursor")}
		if err == nil {
			q.Limit, err = queryLimit(r, 100, 1000)
		}
		if err == nil {
			q.Since, err = parseTime("since", r.URL.Query().Get("since"))
		}
		if err == nil && q.After != "" && fsm.ValidObjectID("cursor", q.After) != nil {
			err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "cursor is not valid")
		}
		if err == nil && q.Kind != "" && !validKind(q.Kind) {
			err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "unknown anomaly kind")
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var page AnomalyPage
		_ = s.view(w, func(rd *fsm.Reader) error {
			page.Anomalies, page.NextCursor = rd.Anomalies(q)
			return nil
		})
		if page.Anomalies == nil {
			page.Anomalies = []*fsm.Anomaly{}
		}
		writeJSON(w, http.StatusOK, page)
	}
}

func validKind(k fsm.AnomalyKind) bool {
	for _, x := range fsm.AnomalyKinds {
		if x == k {
			return true
		}
	}
	return false
}

// anomalyTarget resolves the tenant and anomaly id of a per-anomaly request
// and checks that p may see that tenant's anomalies.
func anomalyTarget(tenantOf func(*http.Request) (string, error), r *http.Request, p fsm.Principal) (t, id string, err error) {
	if t, err = tenantOf(r); err != nil {
		return "", "", err
	}
	if err = canSeeAnomalies(p, t); err != nil {
		return "", "", err
	}
	id = r.PathValue("id")
	if fsm.ValidObjectID("anomaly", id) != nil {
		return "", "", apiErr(http.StatusNotFound, CodeNotFound, "anomaly not found")
	}
	return t, id, nil
}

func (s *Server) getAnomaly(tenantOf func(*http.Request) (string, error)) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, id, err := anomalyTarget(tenantOf, r, p)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var a *fsm.Anomaly
		_ = s.view(w, func(rd *fsm.Reader) error { a, _ = rd.Anomaly(t, id); return nil })
		if a == nil {
			s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, "anomaly not found"))
			return
		}
		writeJSON(w, http.StatusOK, a)
	}
}

func (s *Server) undoAnomaly(tenantOf func(*http.Request) (string, error)) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, id, err := anomalyTarget(tenantOf, r, p)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		res, err := s.propose(r, p, fsm.CmdUndoAnomaly, &fsm.UndoAnomalyCmd{Tenant: t, ID: id})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		setIndex(w, res.Index)
		writeJSON(w, http.StatusOK, res.Value)
	}
}

// threatPolicyReq is the body of PUT …/threat-policy; omitted fields keep
// their current value.
type threatPolicyReq struct {
	AutoRespond         *bool              `json:"auto_respond,omitempty"`
	MaxLevel            *fsm.ResponseLevel `json:"max_level,omitempty"`
	LockUserFor         *string            `json:"lock_user_for,omitempty"`
	BlockIPFor          *string            `json:"block_ip_for,omitempty"`
	BlockIPScope        *string            `json:"block_ip_scope,omitempty"`
	RequireMFAForAdmins *bool              `json:"require_mfa_for_admins,omitempty"`
}

// threatPolicyView is a policy with readable durations.
type threatPolicyView struct {
	fsm.ThreatPolicy
	LockUserFor string `json:"lock_user_for"`
	BlockIPFor  string `json:"block_ip_for"`
}

func policyView(p fsm.ThreatPolicy) threatPolicyView {
	return threatPolicyView{ThreatPolicy: p, LockUserFor: p.LockUserFor.String(), BlockIPFor: p.BlockIPFor.String()}
}

func (s *Server) getThreatPolicy(tenantOf func(*http.Request) (string, error)) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, err := tenantOf(r)
		if err == nil {
			err = canSeeAnomalies(p, t)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var pol fsm.ThreatPolicy
		found := true
		_ = s.view(w, func(rd *fsm.Reader) error {
			if t != "" {
				_, found = rd.Tenant(t)
			}
			pol = rd.ThreatPolicy(t)
			return nil
		})
		if !found {
			s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, "tenant not found"))
			return
		}
		writeJSON(w, http.StatusOK, policyView(pol))
	}
}

func (s *Server) putThreatPolicy(tenantOf func(*http.Request) (string, error)) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		t, err := tenantOf(r)
		if err == nil {
			err = canSeeAnomalies(p, t)
		}
		var req threatPolicyReq
		if err == nil {
			err = decodeJSON(r, &req)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		var pol fsm.ThreatPolicy
		_ = s.fsm.View(func(rd *fsm.Reader) error { pol = rd.ThreatPolicy(t); return nil })
		dur := func(field string, v *string, into *time.Duration) error {
			if v == nil {
				return nil
			}
			d, err := time.ParseDuration(*v)
			if err != nil {
				return apiErr(http.StatusBadRequest, CodeInvalidArgument, field+" must be a duration such as 15m")
			}
			*into = d
			return nil
		}
		if err = dur("lock_user_for", req.LockUserFor, &pol.LockUserFor); err == nil {
			err = dur("block_ip_for", req.BlockIPFor, &pol.BlockIPFor)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if req.AutoRespond != nil {
			pol.AutoRespond = *req.AutoRespond
		}
		if req.MaxLevel != nil {
			pol.MaxLevel = *req.MaxLevel
		}
		if req.BlockIPScope != nil {
			pol.BlockIPScope = *req.BlockIPScope
		}
		if req.RequireMFAForAdmins != nil {
			pol.RequireMFAForAdmins = *req.RequireMFAForAdmins
		}
		pol.Tenant = t
		if e := pol.Validate(); e != nil {
			s.writeError(w, r, e)
			return
		}
		res, err := s.propose(r, p, fsm.CmdSetThreatPolicy, &fsm.SetThreatPolicyCmd{Policy: pol})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		setIndex(w, res.Index)
		writeJSON(w, http.StatusOK, policyView(*res.Value.(*fsm.ThreatPolicy)))
	}
}

// handleUsage takes an edge's usage report on the leader.
func (s *Server) handleUsage(take func(threat.UsageReport) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.edgeAuthorized(r) {
			s.denyEdge(w, r)
			return
		}
		var rep threat.UsageReport
		if err := decodeJSON(r, &rep); err != nil {
			s.writeError(w, r, err)
			return
		}
		if err := take(rep); err != nil {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, err.Error()))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}
