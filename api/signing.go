package api

import (
	"net/http"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// SigningKeyView is a signing key version as listed: never its private part.
type SigningKeyView struct {
	KID       string        `json:"kid"`
	Alg       auth.Alg      `json:"alg"`
	State     auth.KeyState `json:"state"`
	KeyRef    string        `json:"key_ref"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
}

func (s *Server) listSigningKeys(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	if err := requireOperator(p); err != nil {
		s.writeError(w, r, err)
		return
	}
	var keys []*fsm.SigningKey
	_ = s.view(w, func(rd *fsm.Reader) error { keys = rd.SigningKeys(); return nil })
	out := make([]SigningKeyView, 0, len(keys))
	for _, k := range keys {
		out = append(out, SigningKeyView{KID: k.KID, Alg: k.Alg, State: k.State, KeyRef: k.KeyRef, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt})
	}
	writeJSON(w, http.StatusOK, map[string]any{"signing_keys": out})
}

// rotateSigningKey makes a new active key; the previous one keeps verifying
// (verify-only) until retired, so tokens already issued stay valid.
func (s *Server) rotateSigningKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	if err := requireOperator(p); err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.id == nil {
		s.writeError(w, r, ErrNoSecrets)
		return
	}
	cmd, err := s.id.cfg.Secrets.NewSigningKey(r.Context())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.propose(r, p, fsm.CmdAddSigningKey, cmd)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	k := res.Value.(*fsm.SigningKey)
	setIndex(w, res.Index)
	writeJSON(w, http.StatusCreated, SigningKeyView{KID: k.KID, Alg: k.Alg, State: k.State, KeyRef: k.KeyRef, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt})
}

// retireSigningKey stops a verify-only key from verifying anything.
func (s *Server) retireSigningKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	if err := requireOperator(p); err != nil {
		s.writeError(w, r, err)
		return
	}
	kid := r.PathValue("kid")
	if !auth.ValidKID(kid) {
		s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, "signing key not found"))
		return
	}
	res, err := s.propose(r, p, fsm.CmdSetSigningKeyState, &fsm.SetSigningKeyStateCmd{KID: kid, State: auth.KeyRetired})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	k := res.Value.(*fsm.SigningKey)
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, SigningKeyView{KID: k.KID, Alg: k.Alg, State: k.State, KeyRef: k.KeyRef, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt})
}

// identityRoutes mounts the identity endpoints (DESIGN.md §10).
func (s *Server) identityRoutes() {
	h := func(pattern string, fn http.HandlerFunc) { s.mux.HandleFunc(pattern, s.wrap(pattern, fn)) }
	s.mux.HandleFunc("POST /v1/auth/login", s.wrapLimit("POST /v1/auth/login", maxLoginBody, s.leaderOnly(s.login)))
	h("POST /v1/auth/refresh", s.leaderOnly(s.refresh))
	h("POST /v1/auth/logout", s.tokenHolder(true, s.logout))
	h("GET /v1/auth/me", s.tokenHolder(false, s.me))
	h("GET /.well-known/jwks.json", s.jwks)

	h("POST /v1/tenants/{t}/users", s.write(s.createUser))
	h("GET /v1/tenants/{t}/users", s.read(s.listUsers))
	h("GET /v1/tenants/{t}/users/{u}", s.read(s.getUser))
	h("PATCH /v1/tenants/{t}/users/{u}", s.write(s.updateUser))
	h("DELETE /v1/tenants/{t}/users/{u}", s.write(s.deleteUser))
	h("POST /v1/tenants/{t}/users/{u}/password", s.write(s.changePassword))

	h("POST /v1/tenants/{t}/api-keys", s.write(s.createAPIKey))
	h("GET /v1/tenants/{t}/api-keys", s.read(s.listAPIKeys))
	h("DELETE /v1/tenants/{t}/api-keys/{id}", s.write(s.revokeAPIKey))

	h("GET /v1/ip-rules", s.read(s.listIPRules(true)))
	h("POST /v1/ip-rules", s.write(s.addIPRule(true)))
	h("DELETE /v1/ip-rules/{id}", s.write(s.removeIPRule(true)))
	h("GET /v1/tenants/{t}/ip-rules", s.read(s.listIPRules(false)))
	h("POST /v1/tenants/{t}/ip-rules", s.write(s.addIPRule(false)))
	h("DELETE /v1/tenants/{t}/ip-rules/{id}", s.write(s.removeIPRule(false)))

	h("GET /v1/signing-keys", s.read(s.listSigningKeys))
	h("POST /v1/signing-keys/rotate", s.write(s.rotateSigningKey))
	h("POST /v1/signing-keys/{kid}/retire", s.write(s.retireSigningKey))

	s.mux.HandleFunc("POST "+internalAuditPath, s.wrapLimit("POST "+internalAuditPath, 256<<20, s.leaderOnly(s.internalAudit)))
}
