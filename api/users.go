package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"net/mail"
	"strings"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// UserView is a user as the API shows it: the e-mail decrypted, never the
// password hash or the MFA secret.
type UserView struct {
	ID               string    `json:"id"`
	Tenant           string    `json:"tenant"`
	Username         string    `json:"username"`
	Email            string    `json:"email,omitempty"`
	Role             auth.Role `json:"role"`
	Disabled         bool      `json:"disabled"`
	MFAEnabled       bool      `json:"mfa_enabled"`
	Locked           bool      `json:"locked"`
	LockedUntil      time.Time `json:"locked_until,omitzero"`
	TokensValidAfter time.Time `json:"tokens_valid_after"`
	LastLoginAt      time.Time `json:"last_login_at,omitzero"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

func (s *Server) userView(ctx context.Context, u *fsm.User) UserView {
	v := UserView{ID: u.ID, Tenant: u.Tenant, Username: u.Username, Role: u.Role, Disabled: u.Disabled,
		MFAEnabled: len(u.MFASecret) > 0, Locked: u.Locked(s.cfg.Now()), TokensValidAfter: u.TokensValidAfter,
		LastLoginAt: u.LastLoginAt, CreatedAt: u.CreatedAt, UpdatedAt: u.UpdatedAt}
	if v.Locked {
		v.LockedUntil = u.LockedUntil
	}
	if len(u.Email) > 0 && s.id != nil {
		if pt, err := s.id.cfg.Secrets.Open(ctx, u.Email, u.Tenant, "email"); err == nil {
			v.Email = string(pt)
		} else {
			s.log.Error("decrypting a user's e-mail failed", "tenant", u.Tenant, "user", u.ID, "err", err)
		}
	}
	return v
}

func newObjectID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// validEmail accepts a bare address (no display name), at most 254 bytes.
func validEmail(s string) error {
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" || len(s) > 254 || !strings.Contains(s[strings.LastIndexByte(s, '@')+1:], ".") {
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, "email is not a valid address")
	}
	return nil
}

// tenantAdmin checks {t} against the caller (404 for another tenant) and
// requires the admin permission in it (tenant admin, dev principal, operator).
func tenantAdmin(r *http.Request, p fsm.Principal) (string, error) {
	return tenantPerm(r, p, auth.PermAdmin)
}

func tenantPerm(r *http.Request, p fsm.Principal, perm auth.Permission) (string, error) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	if err != nil {
		return "", err
	}
	if hasPerm(p, perm) {
		return t, nil
	}
	return "", apiErr(http.StatusForbidden, CodeForbidden, "this needs the "+perm.String()+" permission")
}

// hasPerm reports whether p holds perm in its tenant: the operator and a dev
// principal hold every permission, anyone else as its role grants.
func hasPerm(p fsm.Principal, perm auth.Permission) bool {
	return p.IsOperator() || p.Kind == fsm.PrincipalDev || p.Role.Has(perm)
}

func policyError(err error) error {
	return apiErr(http.StatusBadRequest, CodeInvalidArgument, "password refused: "+strings.TrimPrefix(err.Error(), "auth: "))
}

type createUserReq struct {
	Username string `json:"username"`
	Password string `json:"password"`
	Email    string `json:"email,omitempty"`
	Role     string `json:"role"`
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantAdmin(r, p)
	var req createUserReq
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
	if e := fsm.ValidUsername(req.Username); e != nil {
		s.writeError(w, r, e)
		return
	}
	if req.Role == "" {
		req.Role = string(auth.RoleReadOnly)
	}
	role, rerr := auth.ParseRole(req.Role, false)
	if rerr != nil {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, rerr.Error()))
		return
	}
	if !p.IsOperator() && p.Kind != fsm.PrincipalDev && !p.Role.Covers(role) {
		s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "you cannot create a user with a role above your own"))
		return
	}
	if req.Email != "" {
		if err := validEmail(req.Email); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	if err := id.cfg.Password.Validate(req.Password, req.Username, req.Email, t); err != nil {
		s.writeError(w, r, policyError(err))
		return
	}
	hash, err := id.cfg.Hasher.Hash(r.Context(), req.Password)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cmd := &fsm.CreateUserCmd{Tenant: t, Username: req.Username, Role: role, PasswordHash: hash}
	if cmd.ID, err = newObjectID(); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Email != "" {
		if cmd.Email, err = id.cfg.Secrets.Seal(r.Context(), []byte(req.Email), t, "email"); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	res, err := s.propose(r, p, fsm.CmdCreateUser, cmd)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusCreated, s.userView(r.Context(), res.Value.(*fsm.User)))
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantAdmin(r, p)
	var limit int
	if err == nil {
		limit, err = queryLimit(r, 100, 1000)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var users []*fsm.User
	var next string
	_ = s.view(w, func(rd *fsm.Reader) error {
		users, next = rd.Users(t, r.URL.Query().Get("cursor"), limit)
		return nil
	})
	out := struct {
		Users      []UserView `json:"users"`
		NextCursor string     `json:"next_cursor,omitempty"`
	}{Users: make([]UserView, 0, len(users)), NextCursor: next}
	for _, u := range users {
		out.Users = append(out.Users, s.userView(r.Context(), u))
	}
	writeJSON(w, http.StatusOK, out)
}

// userParam resolves {u} (a user id, or a username) in tenant t.
func (s *Server) userParam(r *http.Request, t string) (*fsm.User, error) {
	ref := r.PathValue("u")
	var u *fsm.User
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		if fsm.ValidObjectID("user", ref) == nil {
			u, _ = rd.User(t, ref)
		}
		if u == nil && fsm.ValidUsername(ref) == nil {
			u, _ = rd.UserByName(t, ref)
		}
		return nil
	})
	if u == nil {
		return nil, apiErr(http.StatusNotFound, CodeNotFound, "user not found")
	}
	return u, nil
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	var u *fsm.User
	if err == nil {
		u, err = s.userParam(r, t)
	}
	// Users read their own record; reading others needs the admin permission.
	if err == nil && !(p.Kind == fsm.PrincipalUser && p.ID == u.ID) && !hasPerm(p, auth.PermAdmin) {
		err = apiErr(http.StatusForbidden, CodeForbidden, "reading other users needs the admin permission")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, s.fsm.AppliedIndex())
	writeJSON(w, http.StatusOK, s.userView(r.Context(), u))
}

type updateUserReq struct {
	Role     *string `json:"role,omitempty"`
	Disabled *bool   `json:"disabled,omitempty"`
	Email    *string `json:"email,omitempty"`
	Unlock   bool    `json:"unlock,omitempty"`
}

func (s *Server) updateUser(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantAdmin(r, p)
	var u *fsm.User
	if err == nil {
		u, err = s.userParam(r, t)
	}
	var req updateUserReq
	if err == nil {
		err = decodeJSON(r, &req)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	cmd := &fsm.UpdateUserCmd{Tenant: t, ID: u.ID, Disabled: req.Disabled, Unlock: req.Unlock}
	if req.Role != nil {
		role, rerr := auth.ParseRole(*req.Role, false)
		if rerr != nil {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, rerr.Error()))
			return
		}
		cmd.Role = &role
	}
	if req.Email != nil {
		var sealed []byte
		if *req.Email != "" {
			if err := validEmail(*req.Email); err != nil {
				s.writeError(w, r, err)
				return
			}
			if s.id == nil {
				s.writeError(w, r, ErrNoSecrets)
				return
			}
			if sealed, err = s.id.cfg.Secrets.Seal(r.Context(), []byte(*req.Email), t, "email"); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		cmd.Email = &sealed
	}
	res, err := s.propose(r, p, fsm.CmdUpdateUser, cmd)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, s.userView(r.Context(), res.Value.(*fsm.User)))
}

func (s *Server) deleteUser(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantAdmin(r, p)
	var u *fsm.User
	if err == nil {
		u, err = s.userParam(r, t)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.propose(r, p, fsm.CmdDeleteUser, &fsm.DeleteUserCmd{Tenant: t, ID: u.ID})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	w.WriteHeader(http.StatusNoContent)
}

type passwordReq struct {
	CurrentPassword string `json:"current_password,omitempty"`
	NewPassword     string `json:"new_password"`
}

// changePassword: users change their own password by proving the current one;
// an admin (or the operator) resets anyone's whose role it covers. Every
// session of the user ends (tokens_valid_after).
func (s *Server) changePassword(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	var u *fsm.User
	if err == nil {
		u, err = s.userParam(r, t)
	}
	var req passwordReq
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
	self := p.Kind == fsm.PrincipalUser && p.Tenant == t && p.ID == u.ID
	if !self && !hasPerm(p, auth.PermAdmin) {
		s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "changing another user's password needs the admin permission"))
		return
	}
	cmd := &fsm.SetPasswordCmd{Tenant: t, ID: u.ID}
	if self {
		ok, _, verr := id.cfg.Hasher.Verify(r.Context(), u.PasswordHash, req.CurrentPassword)
		if verr != nil && !errors.Is(verr, auth.ErrPasswordTooLong) {
			s.writeError(w, r, verr)
			return
		}
		if !ok {
			s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "the current password is wrong"))
			return
		}
		cmd.Expect = u.PasswordHash
	}
	var email string
	if len(u.Email) > 0 {
		email = s.userView(r.Context(), u).Email
	}
	if err := id.cfg.Password.Validate(req.NewPassword, u.Username, email, t); err != nil {
		s.writeError(w, r, policyError(err))
		return
	}
	if cmd.PasswordHash, err = id.cfg.Hasher.Hash(r.Context(), req.NewPassword); err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.propose(r, p, fsm.CmdSetPassword, cmd)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	w.WriteHeader(http.StatusNoContent)
}
