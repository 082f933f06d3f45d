package api

import (
	"net/http"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// APIKeyView is an API key as listed: never its hash.
type APIKeyView struct {
	ID        string    `json:"id"`
	Tenant    string    `json:"tenant"`
	Name      string    `json:"name"`
	Role      auth.Role `json:"role"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	LastUsed  time.Time `json:"last_used,omitzero"`
	Uses      uint64    `json:"uses"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	// Key is the raw key, present only in the answer to its creation.
	Key string `json:"key,omitempty"`
}

func apiKeyView(k *fsm.APIKey) APIKeyView {
	return APIKeyView{ID: k.ID, Tenant: k.Tenant, Name: k.Name, Role: k.Role, ExpiresAt: k.ExpiresAt, RevokedAt: k.RevokedAt,
		LastUsed: k.LastUsed, Uses: k.Uses, CreatedBy: k.CreatedBy, CreatedAt: k.CreatedAt}
}

type createKeyReq struct {
	Name      string `json:"name"`
	Role      string `json:"role,omitempty"`
	ExpiresIn string `json:"expires_in,omitempty"`
}

// maxKeyLifetime bounds expires_in (ten years).
const maxKeyLifetime = 10 * 365 * 24 * time.Hour

// createAPIKey makes a key for the tenant with a role no higher than the
// caller's (default: the caller's own role), shows the raw key once and
// stores only its keyed hash.
func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantPerm(r, p, auth.PermWrite)
	var req createKeyReq
	if err == nil {
		err = decodeJSON(r, &req)
	}
	id, ierr := s.identityReady()
	if err == nil {
		err = ierr
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	role := p.Role
	if req.Role != "" || !role.Valid() {
		if req.Role == "" {
			req.Role = string(auth.RoleReadOnly)
		}
		var rerr error
		if role, rerr = auth.ParseRole(req.Role, false); rerr != nil {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, rerr.Error()))
			return
		}
	}
	if !p.IsOperator() && p.Kind != fsm.PrincipalDev && !p.Role.Covers(role) {
		s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "you cannot create a key with a role above your own"))
		return
	}
	if req.Name == "" {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "name is required"))
		return
	}
	var expires time.Time
	if req.ExpiresIn != "" {
		d, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || d <= 0 || d > maxKeyLifetime {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "expires_in must be a positive duration such as 720h, at most ten years"))
			return
		}
		expires = s.cfg.Now().Add(d).UTC()
	}
	pep := id.cfg.Secrets.Pepper()
	if pep == nil {
		s.writeError(w, r, ErrNoSecrets)
		return
	}
	raw, key, err := auth.NewAPIKey(nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cmd := &fsm.CreateAPIKeyCmd{ID: key.ID, Tenant: t, Name: req.Name, Role: role, Hash: pep.HashAPIKey(key), ExpiresAt: expires}
	if e := cmd.Validate(); e != nil {
		s.writeError(w, r, e)
		return
	}
	res, err := s.propose(r, p, fsm.CmdCreateAPIKey, cmd)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v := apiKeyView(res.Value.(*fsm.APIKey))
	v.Key = raw
	setIndex(w, res.Index)
	writeJSON(w, http.StatusCreated, v)
}

func (s *Server) listAPIKeys(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantPerm(r, p, auth.PermWrite)
	var limit int
	if err == nil {
		limit, err = queryLimit(r, 100, 1000)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var keys []*fsm.APIKey
	var next string
	_ = s.view(w, func(rd *fsm.Reader) error {
		keys, next = rd.APIKeys(t, r.URL.Query().Get("cursor"), limit)
		return nil
	})
	out := struct {
		Keys       []APIKeyView `json:"api_keys"`
		NextCursor string       `json:"next_cursor,omitempty"`
	}{Keys: make([]APIKeyView, 0, len(keys)), NextCursor: next}
	for _, k := range keys {
		out.Keys = append(out.Keys, apiKeyView(k))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) revokeAPIKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantPerm(r, p, auth.PermWrite)
	id := r.PathValue("id")
	if err == nil && fsm.ValidObjectID("api key", id) != nil {
		err = apiErr(http.StatusNotFound, CodeNotFound, "api key not found")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.propose(r, p, fsm.CmdRevokeAPIKey, &fsm.RevokeAPIKeyCmd{Tenant: t, ID: id})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, apiKeyView(res.Value.(*fsm.APIKey)))
}
