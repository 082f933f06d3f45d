package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// MFA endpoints (TOTP, RFC 6238, with hashed one-time recovery codes):
//
//	GET  /v1/tenants/{t}/users/{u}/mfa           the user or an admin: enrolled, pending, required (and why), codes left
//	POST /v1/tenants/{t}/users/{u}/mfa/enroll    the user: a new secret and otpauth:// URI, pending until activated
//	POST /v1/tenants/{t}/users/{u}/mfa/activate  the user, {"code"}: the pending secret becomes the second factor;
//	                                            answers the recovery codes, shown once
//	POST /v1/tenants/{t}/users/{u}/mfa/disable   the user with {"code"}, or an admin (a lost device) with {}
//
// The secret is generated on the API server, encrypted with the KMS (field
// "mfa_secret", bound to the tenant) before it is proposed, and decrypted
// only to check a code; recovery codes are stored as keyed hashes.

// MFAHooks connects the MFA endpoints to the server's KMS and pepper.
type MFAHooks struct {
	// Seal and Open encrypt and decrypt a TOTP secret for a tenant.
	Seal func(ctx context.Context, tenant string, secret []byte) ([]byte, error)
	Open func(ctx context.Context, tenant string, ciphertext []byte) ([]byte, error)
	// Pepper keys the recovery-code hashes.
	Pepper func() (*auth.Pepper, error)
	// TOTP is the code configuration (default auth.DefaultTOTP); Issuer names
	// the service in authenticator apps (default "AllSource Guard").
	TOTP   auth.TOTP
	Issuer string
	// RecoveryCodes is how many codes activation issues (default 10).
	RecoveryCodes int
}

// MFA serves the MFA endpoints and decides logins' second factors.
type MFA struct {
	s *Server
	h MFAHooks
}

// MountMFA mounts the MFA endpoints and returns the component; its
// SecondFactor is the login's hook (IdentityConfig.SecondFactor).
func (s *Server) MountMFA(h MFAHooks) *MFA {
	if h.TOTP.Algorithm == "" {
		h.TOTP = auth.DefaultTOTP
	}
	if h.Issuer == "" {
		h.Issuer = "AllSource Guard"
	}
	if h.RecoveryCodes == 0 {
		h.RecoveryCodes = 10
	}
	m := &MFA{s: s, h: h}
	const p = "/v1/tenants/{t}/users/{u}/mfa"
	s.Handle("GET "+p, "GET "+p, s.read(m.status))
	s.Handle("POST "+p+"/enroll", "POST "+p+"/enroll", s.write(m.enroll))
	s.Handle("POST "+p+"/activate", "POST "+p+"/activate", s.write(m.activate))
	s.Handle("POST "+p+"/disable", "POST "+p+"/disable", s.write(m.disable))
	return m
}

// mfaTarget validates {t} and {u} and loads the user; self reports whether
// the caller is that user.
func (m *MFA) target(r *http.Request, p fsm.Principal) (u *fsm.User, self bool, err error) {
	s := m.s
	t, err := tenantParam(r)
	if err == nil {
		err = canSeeTenant(p, t)
	}
	id := r.PathValue("u")
	if err == nil && fsm.ValidObjectID("user", id) != nil {
		err = apiErr(http.StatusNotFound, CodeNotFound, "user not found")
	}
	if err != nil {
		return nil, false, err
	}
	if m.h.Seal == nil || m.h.Open == nil || m.h.Pepper == nil {
		return nil, false, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "MFA needs the KMS, which this server does not run")
	}
	self = p.Kind == fsm.PrincipalUser && p.Tenant == t && p.ID == id
	_ = s.fsm.View(func(rd *fsm.Reader) error { u, _ = rd.User(t, id); return nil })
	if u == nil {
		return nil, false, apiErr(http.StatusNotFound, CodeNotFound, "user not found")
	}
	return u, self, nil
}

// MFAStatus is the body of GET …/mfa.
type MFAStatus struct {
	Enrolled      bool   `json:"enrolled"`
	Pending       bool   `json:"pending"`
	Required      bool   `json:"required"`
	Reason        string `json:"reason,omitempty"`
	RecoveryCodes int    `json:"recovery_codes_left"`
}

func (m *MFA) status(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	s := m.s
	u, self, err := m.target(r, p)
	if err == nil && !self && !hasPerm(p, auth.PermAdmin) {
		err = apiErr(http.StatusForbidden, CodeForbidden, "only the user or an admin sees its MFA status")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var st MFAStatus
	_ = s.view(w, func(rd *fsm.Reader) error {
		ms := rd.MFAState(u.Tenant, u.ID)
		st.Required, st.Reason = rd.MFARequired(u)
		st.Enrolled, st.Pending, st.RecoveryCodes = len(u.MFASecret) > 0, len(ms.PendingSecret) > 0, len(ms.RecoveryCodes)
		return nil
	})
	writeJSON(w, http.StatusOK, st)
}

// MFAEnrollment is the body of POST …/mfa/enroll.
type MFAEnrollment struct {
	Secret    string `json:"secret"`
	URI       string `json:"otpauth_uri"`
	ExpiresIn int    `json:"expires_in"` // seconds to activate
}

func (m *MFA) enroll(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	s := m.s
	u, self, err := m.target(r, p)
	if err == nil && !self {
		err = apiErr(http.StatusForbidden, CodeForbidden, "users enrol their own second factor")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	secret, err := m.h.TOTP.GenerateSecret(nil)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sealed, err := m.h.Seal(r.Context(), u.Tenant, []byte(secret))
	if err != nil {
		s.log.Error("sealing an MFA secret failed", "err", err)
		s.writeError(w, r, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the KMS is unavailable; retry shortly"))
		return
	}
	res, err := s.propose(r, p, fsm.CmdMFAEnroll, &fsm.MFAEnrollCmd{Tenant: u.Tenant, UserID: u.ID, Secret: sealed})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	uri, err := m.h.TOTP.ProvisioningURI(secret, m.h.Issuer, u.Tenant+"/"+u.Username)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, MFAEnrollment{Secret: secret, URI: uri, ExpiresIn: int((15 * time.Minute).Seconds())})
}

type mfaCodeReq struct {
	Code string `json:"code,omitempty"`
}

// MFAActivation is the body of POST …/mfa/activate.
type MFAActivation struct {
	RecoveryCodes []string `json:"recovery_codes"`
}

func (m *MFA) activate(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	s := m.s
	u, self, err := m.target(r, p)
	if err == nil && !self {
		err = apiErr(http.StatusForbidden, CodeForbidden, "users activate their own second factor")
	}
	var req mfaCodeReq
	if err == nil {
		err = decodeJSON(r, &req)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var pending []byte
	_ = s.fsm.View(func(rd *fsm.Reader) error { pending = rd.MFAState(u.Tenant, u.ID).PendingSecret; return nil })
	if len(pending) == 0 {
		s.writeError(w, r, apiErr(http.StatusPreconditionFailed, CodeFailedPrecondition, "no enrolment is pending; enrol first"))
		return
	}
	step, err := m.checkTOTP(r.Context(), u.Tenant, pending, req.Code, 0)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	pep, err := m.h.Pepper()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	codes, err := auth.GenerateRecoveryCodes(nil, m.h.RecoveryCodes)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	hashes := make([]auth.KeyHash, len(codes))
	for i, c := range codes {
		if hashes[i], err = pep.HashRecoveryCode(c); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	res, err := s.propose(r, p, fsm.CmdMFAActivate, &fsm.MFAActivateCmd{Tenant: u.Tenant, UserID: u.ID, Secret: pending,
		Step: step, RecoveryCodes: hashes})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	writeJSON(w, http.StatusOK, MFAActivation{RecoveryCodes: codes})
}

func (m *MFA) disable(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	s := m.s
	u, self, err := m.target(r, p)
	var req mfaCodeReq
	if err == nil {
		err = decodeJSON(r, &req)
	}
	if err == nil && !self && !hasPerm(p, auth.PermAdmin) {
		err = apiErr(http.StatusForbidden, CodeForbidden, "only the user or an admin removes a second factor")
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if self && len(u.MFASecret) > 0 {
		// The user proves the factor it removes (a stolen session alone
		// cannot strip it); admins reset lost devices without one.
		if _, err := m.checkTOTP(r.Context(), u.Tenant, u.MFASecret, req.Code, u.MFALastStep); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	res, err := s.propose(r, p, fsm.CmdMFADisable, &fsm.MFADisableCmd{Tenant: u.Tenant, UserID: u.ID})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	setIndex(w, res.Index)
	w.WriteHeader(http.StatusNoContent)
}

var errBadCode = apiErr(http.StatusUnauthorized, CodeUnauthenticated, "the code is not valid")

// checkTOTP decrypts a sealed secret and validates code after lastStep,
// returning the matched step.
func (m *MFA) checkTOTP(ctx context.Context, tenant string, sealed []byte, code string, lastStep uint64) (uint64, error) {
	s := m.s
	if code == "" || len(code) > 16 {
		return 0, errBadCode
	}
	secret, err := m.h.Open(ctx, tenant, sealed)
	if err != nil {
		s.log.Error("opening an MFA secret failed", "err", err)
		return 0, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the KMS is unavailable; retry shortly")
	}
	step, ok, err := m.h.TOTP.Validate(string(secret), code, s.cfg.Now(), lastStep)
	clear(secret)
	if err != nil || !ok {
		return 0, errBadCode
	}
	return step, nil
}

// ErrMFARequired is the answer to a login that needs a second factor and
// brought none (or a wrong one); ErrMFANotEnrolled to one that needs a
// second factor the user has not enrolled.
var (
	ErrMFARequired    = apiErr(http.StatusUnauthorized, CodeMFARequired, "a second factor (totp or recovery_code) is required")
	ErrMFANotEnrolled = apiErr(http.StatusForbidden, CodeMFARequired, "a second factor is required but none is enrolled; ask an admin")
)

// CodeMFARequired is the error code of a login refused for want of a second factor.
const CodeMFARequired = "mfa_required"

// SecondFactor is the outcome of CheckSecondFactor for a login.
type SecondFactor struct {
	// Step is the matched TOTP step (LoginCmd.TOTPStep); 0 when none.
	Step uint64
	// Recovery is the keyed hash of a recovery code presented instead; the
	// login must consume it (CmdMFAUseRecovery) before it succeeds.
	Recovery *auth.KeyHash
}

// CheckSecondFactor decides a login's second factor after its password was
// verified: whether one is required (enrolled, the tenant's policy for
// admins, or a RequireMFA response), and whether totp or recoveryCode
// satisfies it. A wrong or missing factor is ErrMFARequired.
func (m *MFA) Check(ctx context.Context, u *fsm.User, totp, recoveryCode string) (SecondFactor, error) {
	s := m.s
	var required bool
	var codes []auth.KeyHash
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		required, _ = rd.MFARequired(u)
		codes = rd.MFAState(u.Tenant, u.ID).RecoveryCodes
		return nil
	})
	if !required {
		return SecondFactor{}, nil
	}
	if len(u.MFASecret) == 0 {
		return SecondFactor{}, ErrMFANotEnrolled
	}
	if m.h.Open == nil || m.h.Pepper == nil {
		return SecondFactor{}, apiErr(http.StatusServiceUnavailable, CodeUnavailable, "MFA needs the KMS, which this server does not run")
	}
	switch {
	case totp != "":
		step, err := m.checkTOTP(ctx, u.Tenant, u.MFASecret, totp, u.MFALastStep)
		var ae *Error
		if errors.As(err, &ae) && ae == errBadCode {
			return SecondFactor{}, ErrMFARequired
		}
		return SecondFactor{Step: step}, err
	case recoveryCode != "":
		pep, err := m.h.Pepper()
		if err != nil {
			return SecondFactor{}, err
		}
		i, ok := pep.MatchRecoveryCode(recoveryCode, codes)
		if !ok {
			return SecondFactor{}, ErrMFARequired
		}
		h := codes[i]
		return SecondFactor{Recovery: &h}, nil
	}
	return SecondFactor{}, ErrMFARequired
}

// SecondFactor is the login's hook (IdentityConfig.SecondFactor): it returns
// the TOTP step the login consumes. A recovery code is consumed through raft
// here (CmdMFAUseRecovery: of two logins racing with one code, one wins);
// the login then consumes the current TOTP step, so the code of this
// window cannot be replayed after it.
func (m *MFA) SecondFactor(ctx context.Context, u *fsm.User, totp, recoveryCode string) (uint64, error) {
	sf, err := m.Check(ctx, u, totp, recoveryCode)
	if err != nil || sf.Recovery == nil {
		return sf.Step, err
	}
	c, err := fsm.NewCommand(fsm.CmdMFAUseRecovery, fsm.Header{Principal: fsm.Principal{Kind: fsm.PrincipalSystem,
		ID: m.s.cfg.NodeID, Name: "mfa"}, Time: m.s.cfg.Now().UnixNano()},
		&fsm.MFAUseRecoveryCmd{Tenant: u.Tenant, UserID: u.ID, Code: *sf.Recovery})
	if err != nil {
		return 0, err
	}
	res, err := m.s.node.Apply(ctx, c)
	if err != nil {
		return 0, err
	}
	if res.Err != nil {
		return 0, ErrMFARequired // used meanwhile by another login
	}
	step := uint64(m.s.cfg.Now().Unix()) / uint64(m.h.TOTP.Period/time.Second)
	return max(step, u.MFALastStep+1), nil
}
