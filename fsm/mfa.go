package fsm

import (
	"bytes"
	"time"

	"github.com/allsource/guard/auth"
)

// bMFA holds each user's MFA enrolment state beyond the active secret (which
// is User.MFASecret): a pending secret awaiting its first code, the hashed
// recovery codes, and a RequireMFA response's demand for a second factor.
var bMFA = []byte("mfa") // tenant \x00 user id → MFAState

// MFAState is a user's MFA bookkeeping. Secrets are KMS ciphertext and
// recovery codes keyed hashes (auth.Pepper.HashRecoveryCode): the state
// machine never sees either in the clear.
type MFAState struct {
	Tenant        string         `json:"tenant"`
	UserID        string         `json:"user_id"`
	PendingSecret []byte         `json:"pending_secret,omitempty"`
	PendingAt     time.Time      `json:"pending_at,omitzero"`
	RecoveryCodes []auth.KeyHash `json:"recovery_codes,omitempty"`
	// Required is set by a RequireMFA response: the user's next login needs a
	// second factor (and, without one enrolled, is refused until an admin
	// lifts it or the user enrols from an existing session).
	Required   bool      `json:"required,omitempty"`
	RequiredBy string    `json:"required_by,omitempty"` // anomaly id
	RequiredAt time.Time `json:"required_at,omitzero"`
}

func (s *MFAState) empty() bool {
	return len(s.PendingSecret) == 0 && len(s.RecoveryCodes) == 0 && !s.Required
}

// MFAEnrollCmd stores a new pending TOTP secret for the caller.
type MFAEnrollCmd struct {
	Tenant string `json:"tenant"`
	UserID string `json:"user_id"`
	Secret []byte `json:"secret"` // ciphertext
}

// MFAActivateCmd makes the pending secret the active one, after the API
// server verified a code against it (Secret is the ciphertext it decrypted:
// Apply refuses if the pending secret changed meanwhile). Step is the
// matched TOTP step (no replay of that code); RecoveryCodes are the hashes
// of freshly generated codes, shown to the user once.
type MFAActivateCmd struct {
	Tenant        string         `json:"tenant"`
	UserID        string         `json:"user_id"`
	Secret        []byte         `json:"secret"`
	Step          uint64         `json:"step"`
	RecoveryCodes []auth.KeyHash `json:"recovery_codes"`
}

// MFADisableCmd removes a user's second factor (self after proving a code,
// or an admin resetting a lost device).
type MFADisableCmd struct {
	Tenant string `json:"tenant"`
	UserID string `json:"user_id"`
}

// MFAUseRecoveryCmd consumes one recovery code (by its keyed hash). Two
// logins racing with the same code: exactly one Apply finds it.
type MFAUseRecoveryCmd struct {
	Tenant string       `json:"tenant"`
	UserID string       `json:"user_id"`
	Code   auth.KeyHash `json:"code"`
}

// MFAUseRecoveryResult is CmdMFAUseRecovery's value.
type MFAUseRecoveryResult struct {
	Remaining int `json:"remaining"`
}

func (r *Reader) mfaState(tenant, userID string) *MFAState {
	st := &MFAState{Tenant: tenant, UserID: userID}
	if b := bucket(r.tx, bMFA); b != nil {
		getJSON(b, tkey(tenant, userID), st)
	}
	return st
}

// MFAState returns a user's MFA bookkeeping (zero when none).
func (r *Reader) MFAState(tenant, userID string) *MFAState { return r.mfaState(tenant, userID) }

// MFARequired reports whether u must present a second factor to log in, and
// why: a RequireMFA response, the tenant policy for admins, or an enrolled
// secret.
func (r *Reader) MFARequired(u *User) (bool, string) {
	switch {
	case len(u.MFASecret) > 0:
		return true, "enrolled"
	case r.mfaState(u.Tenant, u.ID).Required:
		return true, "required by an anomaly response"
	case u.Role == auth.RoleAdmin && r.ThreatPolicy(u.Tenant).RequireMFAForAdmins:
		return true, "required for admins by the tenant policy"
	}
	return false, ""
}

func (w *wtx) putMFAState(st *MFAState) {
	b := w.wbucket(bMFA)
	if st.empty() {
		del(b, tkey(st.Tenant, st.UserID))
		return
	}
	putJSON(b, tkey(st.Tenant, st.UserID), st)
}

// mfaSelf checks that pr is the user itself, still live, in an active tenant.
func mfaSelf(w *wtx, pr Principal, tenant, userID string) (*User, *Error) {
	if err := ValidTenantID(tenant); err != nil {
		return nil, errf(CodeInvalidArgument, "%v", err)
	}
	if pr.Kind != PrincipalUser || pr.Tenant != tenant || pr.ID != userID {
		return nil, errf(CodeForbidden, "only the user enrols a second factor for itself")
	}
	if e := livePrincipal(w, pr); e != nil {
		return nil, e
	}
	if _, e := activeTenant(w, pr, tenant); e != nil {
		return nil, e
	}
	u, ok := w.reader().User(tenant, userID)
	if !ok {
		return nil, errf(CodeNotFound, "user not found")
	}
	return u, nil
}

func applyMFAEnroll(w *wtx, c *Command) (any, *Error) {
	var p MFAEnrollCmd
	mustDecodePayload(c, &p)
	u, e := mfaSelf(w, c.Header.Principal, p.Tenant, p.UserID)
	if e != nil {
		return nil, e
	}
	if len(p.Secret) == 0 {
		return nil, errf(CodeInvalidArgument, "secret is required")
	}
	if e := validCiphertext("mfa secret", p.Secret); e != nil {
		return nil, e
	}
	if len(u.MFASecret) > 0 {
		return nil, errf(CodeFailedPrecondition, "a second factor is already enrolled; disable it first")
	}
	st := w.reader().mfaState(p.Tenant, p.UserID)
	st.PendingSecret, st.PendingAt = p.Secret, w.now()
	w.putMFAState(st)
	w.audit(p.Tenant, ActionUserUpdated, "user/"+u.ID, OutcomeSuccess, map[string]string{"username": u.Username, "mfa": "enrolment_started"})
	return nil, nil
}

// maxPendingMFA is how long a pending secret waits for its first code.
const maxPendingMFA = 15 * time.Minute

func applyMFAActivate(w *wtx, c *Command) (any, *Error) {
	var p MFAActivateCmd
	mustDecodePayload(c, &p)
	u, e := mfaSelf(w, c.Header.Principal, p.Tenant, p.UserID)
	if e != nil {
		return nil, e
	}
	if len(p.RecoveryCodes) == 0 || len(p.RecoveryCodes) > auth.MaxRecoveryCodes || p.Step == 0 {
		return nil, errf(CodeInvalidArgument, "1 to %d recovery code hashes and the matched step are required", auth.MaxRecoveryCodes)
	}
	for _, h := range p.RecoveryCodes {
		if h.IsZero() {
			return nil, errf(CodeInvalidArgument, "empty recovery code hash")
		}
	}
	st := w.reader().mfaState(p.Tenant, p.UserID)
	now := w.now()
	if len(st.PendingSecret) == 0 || !bytes.Equal(st.PendingSecret, p.Secret) || now.Sub(st.PendingAt) > maxPendingMFA {
		return nil, errf(CodeFailedPrecondition, "no matching enrolment is pending; start again")
	}
	u.MFASecret, u.MFALastStep, u.UpdatedAt = st.PendingSecret, p.Step, now
	putJSON(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID), u)
	st.PendingSecret, st.PendingAt = nil, time.Time{}
	st.RecoveryCodes = p.RecoveryCodes
	st.Required, st.RequiredBy, st.RequiredAt = false, "", time.Time{}
	w.putMFAState(st)
	w.changed(ChangeUser, u.Tenant, u.ID, false)
	w.audit(p.Tenant, ActionUserUpdated, "user/"+u.ID, OutcomeSuccess, map[string]string{"username": u.Username, "mfa": "enabled",
		"recovery_codes": itoa(len(p.RecoveryCodes))})
	return u, nil
}

func applyMFADisable(w *wtx, c *Command) (any, *Error) {
	var p MFADisableCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	var u *User
	if pr.Kind == PrincipalUser && pr.Tenant == p.Tenant && pr.ID == p.UserID {
		var e *Error
		if u, e = mfaSelf(w, pr, p.Tenant, p.UserID); e != nil {
			return nil, e
		}
	} else {
		if err := ValidTenantID(p.Tenant); err != nil {
			return nil, errf(CodeInvalidArgument, "%v", err)
		}
		if _, e := authorize(w, pr, p.Tenant, auth.PermAdmin); e != nil {
			return nil, e
		}
		var ok bool
		if u, ok = w.reader().User(p.Tenant, p.UserID); !ok {
			return nil, errf(CodeNotFound, "user not found")
		}
		if e := mayGrant(pr, u.Role); e != nil {
			return nil, e
		}
	}
	st := w.reader().mfaState(p.Tenant, p.UserID)
	st.PendingSecret, st.PendingAt, st.RecoveryCodes = nil, time.Time{}, nil
	w.putMFAState(st)
	u.MFASecret, u.MFALastStep, u.UpdatedAt = nil, 0, w.now()
	putJSON(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID), u)
	w.changed(ChangeUser, u.Tenant, u.ID, false)
	w.audit(p.Tenant, ActionUserUpdated, "user/"+u.ID, OutcomeSuccess, map[string]string{"username": u.Username, "mfa": "disabled"})
	return u, nil
}

func applyMFAUseRecovery(w *wtx, c *Command) (any, *Error) {
	var p MFAUseRecoveryCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if pr.Kind != PrincipalSystem && !(pr.Kind == PrincipalUser && pr.Tenant == p.Tenant && pr.ID == p.UserID) {
		return nil, errf(CodeForbidden, "a recovery code is used by its user's login")
	}
	if err := ValidTenantID(p.Tenant); err != nil {
		return nil, errf(CodeInvalidArgument, "%v", err)
	}
	if p.Code.IsZero() {
		return nil, errf(CodeInvalidArgument, "code hash is required")
	}
	u, ok := w.reader().User(p.Tenant, p.UserID)
	if !ok {
		return nil, errf(CodeNotFound, "user not found")
	}
	st := w.reader().mfaState(p.Tenant, p.UserID)
	idx := -1
	for i, h := range st.RecoveryCodes {
		if h.Equal(p.Code) {
			idx = i
		}
	}
	if idx < 0 {
		return nil, errf(CodeUnauthenticated, "invalid credentials")
	}
	st.RecoveryCodes = append(st.RecoveryCodes[:idx:idx], st.RecoveryCodes[idx+1:]...)
	w.putMFAState(st)
	w.audit(p.Tenant, ActionUserUpdated, "user/"+u.ID, OutcomeSuccess, map[string]string{"username": u.Username,
		"mfa": "recovery_code_used", "recovery_codes_left": itoa(len(st.RecoveryCodes))})
	return &MFAUseRecoveryResult{Remaining: len(st.RecoveryCodes)}, nil
}
