package api

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// Authentication (DESIGN.md §4, §10). A request carries at most one
// credential: X-API-Key: ask_…, or Authorization: Bearer <jwt | ask_… |
// operator token>. Every refusal answers the same 401 (the reason goes to the
// audit log, not to the caller), except a valid credential of a suspended
// tenant, which answers 403. Every refusal is audited: in the tenant the
// credential names when the server could establish it (a known API key id, a
// token whose signature verified), otherwise in the cluster's chain.

// authResult is an authenticated caller and, for an access token, its claims.
type authResult struct {
	p      fsm.Principal
	claims *auth.Claims
}

var (
	errNoCredential  = apiErr(http.StatusUnauthorized, CodeUnauthenticated, "a credential is required")
	errBadCredential = apiErr(http.StatusUnauthorized, CodeUnauthenticated, "invalid credential")
	errSuspended     = apiErr(http.StatusForbidden, CodeForbidden, "the tenant is suspended")
)

// credential returns the presented credential: X-API-Key wins over
// Authorization (a request sending two different ones is refused).
func credential(r *http.Request) (string, bool) {
	k := strings.TrimSpace(r.Header.Get("X-API-Key"))
	b := bearer(r)
	if k != "" && b != "" && k != b {
		return "", false
	}
	if k != "" {
		return k, true
	}
	return b, true
}

// authenticate resolves the caller. Credentials, when presented, must be valid
// even in dev mode; dev mode only supplies an identity when none is presented.
func (s *Server) authenticate(r *http.Request) (fsm.Principal, error) {
	res, err := s.authn(r)
	return res.p, err
}

func (s *Server) authn(r *http.Request) (authResult, error) {
	tok, ok := credential(r)
	if !ok {
		return authResult{}, s.authFailed(r, "", fsm.Actor{}, "two different credentials", errBadCredential)
	}
	if tok == "" {
		if s.cfg.DevMode {
			return authResult{p: DevPrincipal}, nil
		}
		return authResult{}, s.authFailed(r, "", fsm.Actor{}, "no credential", errNoCredential)
	}
	switch auth.ClassifyCredential(tok) {
	case auth.CredentialAPIKey:
		return s.authAPIKey(r, tok)
	case auth.CredentialJWT:
		return s.authJWT(r, tok)
	case auth.CredentialRefresh:
		return authResult{}, s.authFailed(r, "", fsm.Actor{}, "refresh token presented as a bearer credential", errBadCredential)
	case auth.CredentialOperator:
		var op *fsm.OperatorToken
		_ = s.fsm.View(func(rd *fsm.Reader) error {
			op, _ = rd.Operator()
			return nil
		})
		if op != nil && subtle.ConstantTimeCompare([]byte(HashOperatorToken(tok)), []byte(op.Hash)) == 1 {
			return authResult{p: fsm.Principal{Kind: fsm.PrincipalOperator, ID: op.ID, Name: "operator", Role: "operator"}}, nil
		}
		return authResult{}, s.authFailed(r, "", fsm.Actor{Kind: fsm.PrincipalOperator}, "unknown operator token", errBadCredential)
	}
	return authResult{}, s.authFailed(r, "", fsm.Actor{}, "unrecognised credential", errBadCredential)
}

// authFailed audits a refused credential and returns err.
func (s *Server) authFailed(r *http.Request, tenant string, actor fsm.Actor, reason string, err error) error {
	if err == errBadCredential && !s.node.CaughtUp() {
		// This server is still rebuilding its state (it just restarted): the
		// credential may simply not be there yet. Never say "invalid" then.
		return apiErr(http.StatusServiceUnavailable, CodeUnavailable, "this server is catching up with the cluster; retry shortly")
	}
	s.auditEvent(r, tenant, fsm.ActionAuthFailed, actor, fsm.OutcomeFailure, reason, nil)
	return err
}

func (s *Server) authAPIKey(r *http.Request, tok string) (authResult, error) {
	key, err := auth.ParseAPIKey(tok)
	if err != nil {
		return authResult{}, s.authFailed(r, "", fsm.Actor{Kind: fsm.PrincipalAPIKey}, "malformed API key", errBadCredential)
	}
	if s.id == nil {
		return authResult{}, ErrNoSecrets
	}
	pep := s.id.cfg.Secrets.Pepper()
	if pep == nil {
		return authResult{}, ErrNoSecrets
	}
	var rec *fsm.APIKey
	var ten *fsm.Tenant
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		if rec, _ = rd.APIKey(key.ID); rec != nil {
			ten, _ = rd.Tenant(rec.Tenant)
		}
		return nil
	})
	actor := fsm.Actor{Kind: fsm.PrincipalAPIKey, ID: key.ID}
	if rec == nil {
		return authResult{}, s.authFailed(r, "", actor, "unknown API key", errBadCredential)
	}
	actor.Name, actor.Role = rec.Name, string(rec.Role)
	now := s.cfg.Now()
	switch {
	case !auth.VerifyAPIKeySecret(pep, key, rec.Hash):
		return authResult{}, s.authFailed(r, rec.Tenant, actor, "API key secret does not match", errBadCredential)
	case !rec.RevokedAt.IsZero():
		return authResult{}, s.authFailed(r, rec.Tenant, actor, "API key revoked", errBadCredential)
	case !rec.Usable(now):
		return authResult{}, s.authFailed(r, rec.Tenant, actor, "API key expired", errBadCredential)
	case ten == nil:
		return authResult{}, s.authFailed(r, "", actor, "API key of a deleted tenant", errBadCredential)
	case ten.Status != fsm.TenantActive:
		return authResult{}, s.authFailed(r, rec.Tenant, actor, "tenant suspended", errSuspended)
	}
	s.id.uses.record(rec.ID, now)
	return authResult{p: fsm.Principal{Kind: fsm.PrincipalAPIKey, ID: rec.ID, Tenant: rec.Tenant, Role: rec.Role, Name: rec.Name}}, nil
}

func (s *Server) verifyAccessToken(tok string) (auth.Claims, error) {
	if s.id == nil {
		return auth.Claims{}, ErrNoSecrets
	}
	ks, _ := s.id.cfg.Secrets.SigningKeys()
	if ks == nil {
		return auth.Claims{}, ErrNoSecrets
	}
	return auth.Verify(tok, ks, auth.VerifyOptions{Issuer: s.id.cfg.Issuer, Audience: s.id.cfg.Audience,
		Now: s.cfg.Now(), Leeway: s.id.cfg.Leeway})
}

func (s *Server) authJWT(r *http.Request, tok string) (authResult, error) {
	c, err := s.verifyAccessToken(tok)
	if err != nil {
		if err == ErrNoSecrets {
			return authResult{}, err
		}
		return authResult{}, s.authFailed(r, "", fsm.Actor{Kind: fsm.PrincipalUser}, err.Error(), errBadCredential)
	}
	actor := fsm.Actor{Kind: fsm.PrincipalUser, ID: c.Subject, Role: string(c.Role)}
	var u *fsm.User
	var ten *fsm.Tenant
	var revoked, famRevoked bool
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		revoked = rd.Revoked(c.ID)
		famRevoked = c.Family != "" && rd.FamilyRevoked(c.Family)
		ten, _ = rd.Tenant(c.TenantID)
		u, _ = rd.User(c.TenantID, c.Subject)
		return nil
	})
	tenant := ""
	if ten != nil {
		tenant = ten.ID
	}
	if u != nil {
		actor.Name = u.Username
	}
	switch {
	case revoked:
		return authResult{}, s.authFailed(r, tenant, actor, "token revoked", errBadCredential)
	case famRevoked:
		return authResult{}, s.authFailed(r, tenant, actor, "token's session revoked", errBadCredential)
	case ten == nil:
		return authResult{}, s.authFailed(r, "", actor, "token of a deleted tenant", errBadCredential)
	case u == nil:
		return authResult{}, s.authFailed(r, tenant, actor, "token of a deleted user", errBadCredential)
	case u.Disabled:
		return authResult{}, s.authFailed(r, tenant, actor, "user disabled", errBadCredential)
	case c.IssuedAt.Before(u.TokensValidAfter):
		return authResult{}, s.authFailed(r, tenant, actor, "token issued before tokens_valid_after (role, password or status changed)", errBadCredential)
	case u.Role != c.Role:
		return authResult{}, s.authFailed(r, tenant, actor, "role changed since the token was issued", errBadCredential)
	case ten.Status != fsm.TenantActive:
		return authResult{}, s.authFailed(r, tenant, actor, "tenant suspended", errSuspended)
	}
	return authResult{p: fsm.Principal{Kind: fsm.PrincipalUser, ID: u.ID, Tenant: u.Tenant, Role: u.Role, Name: u.Username}, claims: &c}, nil
}
