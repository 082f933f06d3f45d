package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// LoginRequest is the body of POST /v1/auth/login.
type LoginRequest struct {
	Tenant       string `json:"tenant"`
	Username     string `json:"username"`
	Password     string `json:"password"`
	TOTP         string `json:"totp,omitempty"`
	RecoveryCode string `json:"recovery_code,omitempty"`
}

// TokenResponse is the answer of a login or a refresh.
type TokenResponse struct {
	AccessToken      string `json:"access_token"`
	RefreshToken     string `json:"refresh_token"`
	TokenType        string `json:"token_type"`
	ExpiresIn        int64  `json:"expires_in"`
	RefreshExpiresIn int64  `json:"refresh_expires_in"`
}

var errLoginFailed = apiErr(http.StatusUnauthorized, CodeUnauthenticated, "invalid credentials")

// maxLoginBody bounds a login body well below the server's general limit:
// a password is at most 1 KiB.
const maxLoginBody = 8 << 10

// DecodeLoginRequest reads a login body strictly (one JSON object, known
// fields, no trailing data) and bounds every field: tenant ≤ 64 bytes,
// username ≤ 256, password ≤ auth.MaxPasswordBytes, totp ≤ 16, recovery code
// ≤ 64, all valid UTF-8. Malformed bodies are client errors; a well-formed
// body with an unknown tenant or user is not (that is decided with the same
// cost as a wrong password).
func DecodeLoginRequest(rd io.Reader) (LoginRequest, error) {
	var req LoginRequest
	dec := json.NewDecoder(io.LimitReader(rd, maxLoginBody+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return LoginRequest{}, apiErr(http.StatusBadRequest, CodeInvalidArgument, "malformed login body")
	}
	if dec.InputOffset() > maxLoginBody {
		return LoginRequest{}, apiErr(http.StatusRequestEntityTooLarge, CodeTooLarge, "login body too large")
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		return LoginRequest{}, apiErr(http.StatusBadRequest, CodeInvalidArgument, "unexpected data after the JSON body")
	}
	for _, f := range []struct {
		v   string
		max int
	}{{req.Tenant, 64}, {req.Username, 256}, {req.Password, auth.MaxPasswordBytes}, {req.TOTP, 16}, {req.RecoveryCode, 64}} {
		if len(f.v) > f.max || !utf8.ValidString(f.v) {
			return LoginRequest{}, apiErr(http.StatusBadRequest, CodeInvalidArgument, "a login field is too long or not UTF-8")
		}
	}
	if req.Tenant == "" || req.Username == "" || req.Password == "" {
		return LoginRequest{}, apiErr(http.StatusBadRequest, CodeInvalidArgument, "tenant, username and password are required")
	}
	return req, nil
}

func (s *Server) identityReady() (*identity, error) {
	if s.id == nil || s.id.cfg.Hasher == nil {
		return nil, ErrNoSecrets
	}
	return s.id, nil
}

// login: the same answer, in the same time, for an unknown tenant or user, a
// wrong password, a disabled or locked account: one Argon2id verification
// (against a dummy hash when there is no usable one) and a 401. Failures are
// recorded asynchronously through the audit batcher (which also counts them
// toward the lockout, through raft), so the answer does not wait for them.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	id, err := s.identityReady()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := DecodeLoginRequest(r.Body)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	now := s.cfg.Now()
	var u *fsm.User
	reason := ""
	tenant := req.Tenant
	if fsm.ValidTenantID(req.Tenant) != nil {
		reason, tenant = "unknown tenant", ""
	} else {
		_ = s.fsm.View(func(rd *fsm.Reader) error {
			t, ok := rd.Tenant(req.Tenant)
			switch {
			case !ok:
				reason = "unknown tenant"
			case t.Status != fsm.TenantActive:
				reason = "tenant suspended"
			}
			if ok {
				u, _ = rd.UserByName(req.Tenant, req.Username)
			}
			return nil
		})
	}
	hash := ""
	switch {
	case reason != "":
	case u == nil:
		reason = "unknown user"
	case u.Disabled:
		reason = "user disabled"
	case u.Locked(now):
		reason = "account locked"
	default:
		hash = u.PasswordHash
	}
	// One verification in every case: the dummy when hash is empty.
	ok, rehash, verr := id.cfg.Hasher.Verify(r.Context(), hash, req.Password)
	if verr != nil && !errors.Is(verr, auth.ErrPasswordTooLong) {
		if r.Context().Err() != nil || errors.Is(verr, context.DeadlineExceeded) || errors.Is(verr, context.Canceled) {
			s.writeError(w, r, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "too many logins in progress; retry shortly"))
			return
		}
		s.log.Error("password verification failed", "err", verr)
	}
	if reason == "" && !ok {
		reason = "wrong password"
	}
	var step uint64
	if reason == "" && (len(u.MFASecret) > 0 || id.cfg.SecondFactor != nil) {
		if id.cfg.SecondFactor == nil {
			reason = "second factor required but not available"
		} else if step, err = id.cfg.SecondFactor(r.Context(), u, req.TOTP, req.RecoveryCode); err != nil {
			s.loginFailed(r, tenant, req.Username, u, "second factor: "+err.Error())
			s.writeError(w, r, err)
			return
		}
	}
	if reason != "" {
		s.loginFailed(r, tenant, req.Username, u, reason)
		s.writeError(w, r, errLoginFailed)
		return
	}
	newHash := ""
	if rehash {
		if newHash, err = id.cfg.Hasher.Hash(r.Context(), req.Password); err != nil {
			newHash = "" // upgrade next time
		}
	}
	pep := id.cfg.Secrets.Pepper()
	if pep == nil {
		s.writeError(w, r, ErrNoSecrets)
		return
	}
	rawRefresh, rt, err := auth.NewRefreshFamily(nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	up := fsm.Principal{Kind: fsm.PrincipalUser, ID: u.ID, Tenant: u.Tenant, Role: u.Role, Name: u.Username}
	refreshUntil := now.Add(id.cfg.RefreshTTL)
	res, err := s.propose(r, up, fsm.CmdLogin, &fsm.LoginCmd{Tenant: u.Tenant, UserID: u.ID, VerifiedHash: u.PasswordHash,
		NewHash: newHash, Family: rt.Family, RefreshHash: pep.HashRefreshToken(rt), RefreshUntil: refreshUntil, TOTPStep: step})
	if err != nil {
		var fe *fsm.Error
		if errors.As(err, &fe) {
			s.loginFailed(r, tenant, req.Username, u, "refused at commit: "+fe.Message)
			err = errLoginFailed
		}
		s.writeError(w, r, err)
		return
	}
	lr := res.Value.(*fsm.LoginResult)
	s.issueTokens(w, r, lr.User, rt.Family, rawRefresh, refreshUntil, res.Index)
}

func (s *Server) loginFailed(r *http.Request, tenant, username string, u *fsm.User, reason string) {
	f := fsm.LoginFailure{Tenant: tenant, Username: truncate(username, 64), Reason: truncate(reason, 256), Time: s.cfg.Now(),
		IP: s.clientIP(r), UserAgent: truncate(r.UserAgent(), 256), RequestID: requestID(r.Context())}
	if !utf8.ValidString(f.Username) {
		f.Username = ""
	}
	if u != nil {
		f.UserID = u.ID
	}
	s.id.audit.AddLoginFailure(f)
}

// issueTokens mints an access token for u and answers with it and the
// refresh token.
func (s *Server) issueTokens(w http.ResponseWriter, r *http.Request, u *fsm.User, family, rawRefresh string, refreshUntil time.Time, index uint64) {
	id := s.id
	_, key := id.cfg.Secrets.SigningKeys()
	if key == nil {
		s.writeError(w, r, ErrNoSecrets)
		return
	}
	now := s.cfg.Now().Truncate(time.Second)
	// iat is whole seconds and compared with tokens_valid_after: a token
	// issued in the second of a role change must not look older than it.
	iat := now
	if iat.Before(u.TokensValidAfter) {
		iat = u.TokensValidAfter
	}
	jti, err := auth.NewTokenID(nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	c := auth.Claims{Subject: u.ID, TenantID: u.Tenant, Role: u.Role, Issuer: id.cfg.Issuer, Audience: []string{id.cfg.Audience},
		IssuedAt: iat, NotBefore: iat, ExpiresAt: iat.Add(id.cfg.AccessTTL), ID: jti, Use: auth.TokenAccess, Family: family}
	tok, err := auth.Mint(c, key)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, index)
	writeJSON(w, http.StatusOK, TokenResponse{AccessToken: tok, RefreshToken: rawRefresh, TokenType: "Bearer",
		ExpiresIn: int64(c.ExpiresAt.Sub(now) / time.Second), RefreshExpiresIn: int64(refreshUntil.Sub(now) / time.Second)})
}

type refreshReq struct {
	RefreshToken string `json:"refresh_token"`
}

// refresh exchanges a refresh token for a new access token and a new refresh
// token (rotation). Presenting a token that was already exchanged revokes the
// whole family: one of its two holders is an attacker.
func (s *Server) refresh(w http.ResponseWriter, r *http.Request) {
	id, err := s.identityReady()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req refreshReq
	if err := decodeJSON(r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	rt, err := auth.ParseRefreshToken(req.RefreshToken)
	if err != nil {
		s.writeError(w, r, s.authFailed(r, "", fsm.Actor{Kind: fsm.PrincipalUser}, "malformed refresh token", errBadCredential))
		return
	}
	pep := id.cfg.Secrets.Pepper()
	if pep == nil {
		s.writeError(w, r, ErrNoSecrets)
		return
	}
	rawNext, next, err := auth.NewRefreshToken(nil, rt.Family)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.propose(r, s.systemPrincipal(), fsm.CmdRefresh, &fsm.RefreshCmd{Family: rt.Family,
		Presented: pep.HashRefreshToken(rt), Next: pep.HashRefreshToken(next)})
	if err != nil {
		var fe *fsm.Error
		if errors.As(err, &fe) {
			err = s.authFailed(r, "", fsm.Actor{Kind: fsm.PrincipalUser}, "refresh refused: "+fe.Message, errBadCredential)
		}
		s.writeError(w, r, err)
		return
	}
	rr := res.Value.(*fsm.RefreshResult)
	if rr.Verdict != fsm.RefreshRotated {
		s.writeError(w, r, errBadCredential) // reuse: audited and revoked in Apply
		return
	}
	s.issueTokens(w, r, rr.User, rt.Family, rawNext, rr.Session.ExpiresAt, res.Index)
}

// tokenHolder authenticates like write/read and hands the handler the access
// token's claims (nil for other credentials).
func (s *Server) tokenHolder(leader bool, h func(w http.ResponseWriter, r *http.Request, a authResult)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if leader && !s.node.IsLeader() {
			s.forward(w, r)
			return
		}
		a, err := s.authn(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r, a)
		s.auditOutcome(w, r, a.p)
	}
}

// logout revokes the presented access token (until it would have expired)
// and its refresh family.
func (s *Server) logout(w http.ResponseWriter, r *http.Request, a authResult) {
	if a.claims == nil {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "logout applies to access tokens; revoke API keys instead"))
		return
	}
	res, err := s.propose(r, a.p, fsm.CmdLogout, &fsm.LogoutCmd{JTI: a.claims.ID, ExpiresAt: a.claims.ExpiresAt, Family: a.claims.Family})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	w.WriteHeader(http.StatusNoContent)
}

// Me is the body of GET /v1/auth/me.
type Me struct {
	Kind        fsm.PrincipalKind `json:"kind"`
	ID          string            `json:"id"`
	Tenant      string            `json:"tenant,omitempty"`
	Role        auth.Role         `json:"role,omitempty"`
	Name        string            `json:"name,omitempty"`
	Permissions []string          `json:"permissions"`
	ExpiresAt   *time.Time        `json:"expires_at,omitempty"`
	TokenID     string            `json:"jti,omitempty"`
}

func (s *Server) me(w http.ResponseWriter, r *http.Request, a authResult) {
	m := Me{Kind: a.p.Kind, ID: a.p.ID, Tenant: a.p.Tenant, Role: a.p.Role, Name: a.p.Name, Permissions: []string{}}
	for _, perm := range []auth.Permission{auth.PermRead, auth.PermWrite, auth.PermAdmin, auth.PermMetrics,
		auth.PermManageSchemas, auth.PermManagePipelines, auth.PermManageTenants} {
		if a.p.Role.Has(perm) || a.p.Kind == fsm.PrincipalDev {
			m.Permissions = append(m.Permissions, perm.String())
		}
	}
	if a.claims != nil {
		m.ExpiresAt, m.TokenID = &a.claims.ExpiresAt, a.claims.ID
	}
	setIndex(w, s.fsm.AppliedIndex())
	writeJSON(w, http.StatusOK, m)
}

// jwks serves the public signing keys (Ed25519 only: HS256 secrets are never
// published). Any server answers from its own state; no credential needed.
func (s *Server) jwks(w http.ResponseWriter, r *http.Request) {
	var keys []*fsm.SigningKey
	_ = s.view(w, func(rd *fsm.Reader) error { keys = rd.SigningKeys(); return nil })
	var vks []*auth.VerificationKey
	for _, k := range keys {
		if k.Alg != auth.AlgEdDSA || k.State == auth.KeyRetired {
			continue
		}
		vk, err := auth.NewEd25519VerificationKey(k.KID, k.PublicKey, k.State)
		if err != nil {
			continue
		}
		vks = append(vks, vk)
	}
	ks, err := auth.NewKeySet(vks...)
	if err == nil {
		var b []byte
		if b, err = auth.MarshalJWKS(ks); err == nil {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "public, max-age=60")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(b)
			return
		}
	}
	s.writeError(w, r, err)
}
