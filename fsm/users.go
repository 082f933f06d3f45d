package fsm

import (
	"regexp"
	"strings"
	"time"

	"github.com/allsource/guard/auth"
)

// User is a tenant's human account. The password is stored only as an Argon2id
// PHC string made on an API server; the e-mail address and the MFA secret only
// as KMS ciphertext (the state machine never sees them in the clear).
type User struct {
	ID       string    `json:"id"`
	Tenant   string    `json:"tenant"`
	Username string    `json:"username"`
	Email    []byte    `json:"email,omitempty"` // ciphertext
	Role     auth.Role `json:"role"`
	// PasswordHash is the Argon2id PHC string.
	PasswordHash string `json:"password_hash"`
	Disabled     bool   `json:"disabled"`
	// TokensValidAfter: access tokens issued before it (by iat) are refused.
	// Whole seconds, rounded up, because iat has one-second precision.
	TokensValidAfter time.Time `json:"tokens_valid_after"`
	MFASecret        []byte    `json:"mfa_secret,omitempty"` // ciphertext of the TOTP secret
	MFALastStep      uint64    `json:"mfa_last_step,omitempty"`
	// Lockout state (brute-force protection), kept through raft so every
	// server refuses the same logins.
	FailedLogins      int       `json:"failed_logins,omitempty"`
	FirstFailedAt     time.Time `json:"first_failed_at,omitzero"`
	LockedUntil       time.Time `json:"locked_until,omitzero"`
	LastLoginAt       time.Time `json:"last_login_at,omitzero"`
	PasswordChangedAt time.Time `json:"password_changed_at"`
	CreatedAt         time.Time `json:"created_at"`
	UpdatedAt         time.Time `json:"updated_at"`
	CreatedBy         string    `json:"created_by,omitempty"`
}

// Locked reports whether logins are refused at time now.
func (u *User) Locked(now time.Time) bool { return now.Before(u.LockedUntil) }

var usernamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$`)

// ValidUsername checks a username: 1–64 of [A-Za-z0-9._@+-], starting with a
// letter or digit. Usernames are unique per tenant, case-insensitively.
func ValidUsername(s string) *Error {
	if !usernamePattern.MatchString(s) {
		return errf(CodeInvalidArgument, "username must be 1-64 characters of A-Z a-z 0-9 . _ @ + - starting with a letter or digit")
	}
	return nil
}

var userIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ValidObjectID checks an id made by a proposer: 32 lower-case hex characters.
func ValidObjectID(kind, id string) *Error {
	if !userIDPattern.MatchString(id) {
		return errf(CodeInvalidArgument, "%s id must be 32 lower-case hex characters", kind)
	}
	return nil
}

func validPHC(h string) *Error {
	if !strings.HasPrefix(h, "$argon2id$") || len(h) > 512 {
		return errf(CodeInvalidArgument, "password hash must be an argon2id PHC string")
	}
	return nil
}

func validCiphertext(field string, b []byte) *Error {
	if len(b) > 8192 {
		return errf(CodeInvalidArgument, "%s ciphertext is larger than 8 KiB", field)
	}
	return nil
}

// ceilSecond rounds t up to a whole second (tokens_valid_after against iat).
func ceilSecond(t time.Time) time.Time {
	if t.Truncate(time.Second).Equal(t) {
		return t
	}
	return t.Truncate(time.Second).Add(time.Second)
}

// CreateUserCmd is the payload of CmdCreateUser.
type CreateUserCmd struct {
	ID           string    `json:"id"`
	Tenant       string    `json:"tenant"`
	Username     string    `json:"username"`
	Email        []byte    `json:"email,omitempty"`
	Role         auth.Role `json:"role"`
	PasswordHash string    `json:"password_hash"`
}

// Validate checks the payload's form.
func (c *CreateUserCmd) Validate() *Error {
	if err := ValidTenantID(c.Tenant); err != nil {
		return errf(CodeInvalidArgument, "%v", err)
	}
	if e := ValidObjectID("user", c.ID); e != nil {
		return e
	}
	if e := ValidUsername(c.Username); e != nil {
		return e
	}
	if !c.Role.Valid() {
		return errf(CodeInvalidArgument, "unknown role %q", c.Role)
	}
	if e := validCiphertext("email", c.Email); e != nil {
		return e
	}
	return validPHC(c.PasswordHash)
}

// UpdateUserCmd is the payload of CmdUpdateUser; nil fields stay as they are.
type UpdateUserCmd struct {
	Tenant   string     `json:"tenant"`
	ID       string     `json:"id"`
	Role     *auth.Role `json:"role,omitempty"`
	Disabled *bool      `json:"disabled,omitempty"`
	Email    *[]byte    `json:"email,omitempty"`
	// MFASecret sets (non-empty) or clears (empty) the TOTP secret ciphertext.
	MFASecret *[]byte `json:"mfa_secret,omitempty"`
	// Unlock clears the lockout state.
	Unlock bool `json:"unlock,omitempty"`
}

// DeleteUserCmd is the payload of CmdDeleteUser.
type DeleteUserCmd struct {
	Tenant string `json:"tenant"`
	ID     string `json:"id"`
}

// SetPasswordCmd is the payload of CmdSetPassword. A user changing their own
// password proves the current one on the API server, which sends the hash it
// verified against as Expect: Apply refuses when the stored hash has changed
// since (no lost update between verification and write).
type SetPasswordCmd struct {
	Tenant       string `json:"tenant"`
	ID           string `json:"id"`
	PasswordHash string `json:"password_hash"`
	Expect       string `json:"expect,omitempty"`
}

func applyCreateUser(w *wtx, c *Command) (any, *Error) {
	var p CreateUserCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if e := p.Validate(); e != nil {
		return nil, e
	}
	t, e := authorize(w, pr, p.Tenant, auth.PermAdmin)
	if e != nil {
		return nil, e
	}
	if e := mayGrant(pr, p.Role); e != nil {
		return nil, e
	}
	names := w.tx.Bucket(bUserNames)
	nameKey := tkey(p.Tenant, strings.ToLower(p.Username))
	if names.Get(nameKey) != nil {
		return nil, errf(CodeConflict, "username %q is taken in tenant %q", p.Username, p.Tenant)
	}
	users := w.tx.Bucket(bUsers)
	if users.Get(tkey(p.Tenant, p.ID)) != nil {
		return nil, errf(CodeConflict, "user id %s exists", p.ID)
	}
	if t.Users >= t.Quotas.Effective().MaxUsers {
		return nil, errf(CodeFailedPrecondition, "tenant %q has reached its quota of %d users", t.ID, t.Quotas.Effective().MaxUsers)
	}
	now := w.now()
	u := &User{ID: p.ID, Tenant: p.Tenant, Username: p.Username, Email: p.Email, Role: p.Role,
		PasswordHash: p.PasswordHash, TokensValidAfter: ceilSecond(now), PasswordChangedAt: now,
		CreatedAt: now, UpdatedAt: now, CreatedBy: string(pr.Kind) + ":" + pr.ID}
	putJSON(users, tkey(p.Tenant, p.ID), u)
	if err := names.Put(nameKey, []byte(p.ID)); err != nil {
		panic("fsm: put username: " + err.Error())
	}
	t.Users++
	w.saveTenantCounters(t)
	w.changed(ChangeUser, p.Tenant, p.ID, false)
	w.audit(p.Tenant, ActionUserCreated, "user/"+p.ID, OutcomeSuccess, map[string]string{"username": p.Username, "role": string(p.Role)})
	return u, nil
}

func applyUpdateUser(w *wtx, c *Command) (any, *Error) {
	var p UpdateUserCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if err := ValidTenantID(p.Tenant); err != nil {
		return nil, errf(CodeInvalidArgument, "%v", err)
	}
	if _, e := authorize(w, pr, p.Tenant, auth.PermAdmin); e != nil {
		return nil, e
	}
	u, ok := w.reader().User(p.Tenant, p.ID)
	if !ok {
		return nil, errf(CodeNotFound, "user not found")
	}
	if e := mayGrant(pr, u.Role); e != nil {
		return nil, e
	}
	meta := map[string]string{"username": u.Username}
	now := w.now()
	revoke := false
	action := ActionUserUpdated
	if p.Role != nil && *p.Role != u.Role {
		if e := mayGrant(pr, *p.Role); e != nil {
			return nil, e
		}
		meta["old_role"], meta["role"] = string(u.Role), string(*p.Role)
		u.Role, revoke, action = *p.Role, true, ActionRoleChanged
	}
	if p.Email != nil {
		if e := validCiphertext("email", *p.Email); e != nil {
			return nil, e
		}
		u.Email = *p.Email
		meta["email"] = "changed"
	}
	if p.MFASecret != nil {
		if e := validCiphertext("mfa secret", *p.MFASecret); e != nil {
			return nil, e
		}
		u.MFASecret, u.MFALastStep = *p.MFASecret, 0
		meta["mfa"] = map[bool]string{true: "enabled", false: "disabled"}[len(*p.MFASecret) > 0]
	}
	if p.Disabled != nil && *p.Disabled != u.Disabled {
		u.Disabled = *p.Disabled
		meta["disabled"] = map[bool]string{true: "true", false: "false"}[u.Disabled]
		revoke = revoke || u.Disabled
	}
	if p.Unlock {
		u.FailedLogins, u.FirstFailedAt, u.LockedUntil = 0, time.Time{}, time.Time{}
		meta["unlocked"] = "true"
	}
	if revoke {
		u.TokensValidAfter = ceilSecond(now)
	}
	u.UpdatedAt = now
	putJSON(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID), u)
	w.changed(ChangeUser, u.Tenant, u.ID, false)
	w.audit(u.Tenant, action, "user/"+u.ID, OutcomeSuccess, meta)
	return u, nil
}

func applyDeleteUser(w *wtx, c *Command) (any, *Error) {
	var p DeleteUserCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if err := ValidTenantID(p.Tenant); err != nil {
		return nil, errf(CodeInvalidArgument, "%v", err)
	}
	t, e := authorize(w, pr, p.Tenant, auth.PermAdmin)
	if e != nil {
		return nil, e
	}
	u, ok := w.reader().User(p.Tenant, p.ID)
	if !ok {
		return nil, errf(CodeNotFound, "user not found")
	}
	if e := mayGrant(pr, u.Role); e != nil {
		return nil, e
	}
	del(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID))
	del(w.tx.Bucket(bUserNames), tkey(u.Tenant, strings.ToLower(u.Username)))
	if t.Users > 0 {
		t.Users--
	}
	w.saveTenantCounters(t)
	w.changed(ChangeUser, u.Tenant, u.ID, true)
	w.audit(u.Tenant, ActionUserDeleted, "user/"+u.ID, OutcomeSuccess, map[string]string{"username": u.Username})
	return nil, nil
}

func applySetPassword(w *wtx, c *Command) (any, *Error) {
	var p SetPasswordCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if err := ValidTenantID(p.Tenant); err != nil {
		return nil, errf(CodeInvalidArgument, "%v", err)
	}
	if e := validPHC(p.PasswordHash); e != nil {
		return nil, e
	}
	self := pr.Kind == PrincipalUser && pr.Tenant == p.Tenant && pr.ID == p.ID
	if self {
		if e := livePrincipal(w, pr); e != nil {
			return nil, e
		}
		if _, e := activeTenant(w, pr, p.Tenant); e != nil {
			return nil, e
		}
	} else if _, e := authorize(w, pr, p.Tenant, auth.PermAdmin); e != nil {
		return nil, e
	}
	u, ok := w.reader().User(p.Tenant, p.ID)
	if !ok {
		return nil, errf(CodeNotFound, "user not found")
	}
	if self {
		if p.Expect == "" || p.Expect != u.PasswordHash {
			return nil, errf(CodeFailedPrecondition, "the password changed meanwhile; try again")
		}
	} else if e := mayGrant(pr, u.Role); e != nil {
		return nil, e
	}
	now := w.now()
	u.PasswordHash, u.PasswordChangedAt, u.UpdatedAt = p.PasswordHash, now, now
	u.TokensValidAfter = ceilSecond(now) // a new password ends every session
	u.FailedLogins, u.FirstFailedAt, u.LockedUntil = 0, time.Time{}, time.Time{}
	putJSON(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID), u)
	w.changed(ChangeUser, u.Tenant, u.ID, false)
	w.audit(u.Tenant, ActionPasswordChanged, "user/"+u.ID, OutcomeSuccess, map[string]string{
		"username": u.Username, "by": map[bool]string{true: "self", false: "admin"}[self]})
	return u, nil
}

// LoginCmd records a successful login, decided on an API server that verified
// the password against VerifiedHash. Apply re-checks that the account is still
// usable and that the hash has not changed since; it resets the failure count,
// stores the new refresh session and, when the stored hash used old Argon2
// parameters, the re-hash (NewHash).
type LoginCmd struct {
	Tenant       string       `json:"tenant"`
	UserID       string       `json:"user_id"`
	VerifiedHash string       `json:"verified_hash"`
	NewHash      string       `json:"new_hash,omitempty"`
	Family       string       `json:"family"`
	RefreshHash  auth.KeyHash `json:"refresh_hash"`
	RefreshUntil time.Time    `json:"refresh_until"`
	// TOTPStep is the TOTP time step the login's code matched (0: no MFA).
	TOTPStep uint64 `json:"totp_step,omitempty"`
}

// LoginResult is CmdLogin's value.
type LoginResult struct {
	User    *User           `json:"user"`
	Session *RefreshSession `json:"session"`
}

func applyLogin(w *wtx, c *Command) (any, *Error) {
	var p LoginCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if pr.Kind != PrincipalUser || pr.Tenant != p.Tenant || pr.ID != p.UserID {
		return nil, errf(CodeForbidden, "a login is proposed for the user who logged in")
	}
	if e := ValidObjectID("refresh family", p.Family); e != nil {
		return nil, e
	}
	if p.RefreshHash.IsZero() || p.RefreshUntil.IsZero() {
		return nil, errf(CodeInvalidArgument, "refresh hash and expiry are required")
	}
	if p.NewHash != "" {
		if e := validPHC(p.NewHash); e != nil {
			return nil, e
		}
	}
	if _, e := activeTenant(w, pr, p.Tenant); e != nil {
		return nil, e
	}
	u, ok := w.reader().User(p.Tenant, p.UserID)
	now := w.now()
	switch {
	case !ok || u.Disabled:
		return nil, errf(CodeUnauthenticated, "invalid credentials")
	case u.PasswordHash != p.VerifiedHash:
		return nil, errf(CodeUnauthenticated, "invalid credentials")
	case u.Locked(now):
		return nil, errf(CodeUnauthenticated, "invalid credentials")
	case len(u.MFASecret) > 0 && p.TOTPStep <= u.MFALastStep:
		return nil, errf(CodeUnauthenticated, "invalid credentials")
	}
	if sb := bucket(w.tx, bRefresh); sb != nil && sb.Get([]byte(p.Family)) != nil {
		return nil, errf(CodeConflict, "refresh family exists")
	}
	if p.NewHash != "" {
		u.PasswordHash = p.NewHash
	}
	if p.TOTPStep > 0 {
		u.MFALastStep = p.TOTPStep
	}
	u.FailedLogins, u.FirstFailedAt, u.LockedUntil, u.LastLoginAt = 0, time.Time{}, time.Time{}, now
	putJSON(w.tx.Bucket(bUsers), tkey(u.Tenant, u.ID), u)
	s := &RefreshSession{RefreshFamily: auth.RefreshFamily{ID: p.Family, Current: p.RefreshHash},
		Tenant: u.Tenant, UserID: u.ID, CreatedAt: now, RotatedAt: now, ExpiresAt: p.RefreshUntil}
	putJSON(w.wbucket(bRefresh), []byte(p.Family), s)
	meta := map[string]string{"username": u.Username}
	if p.NewHash != "" {
		meta["rehashed"] = "true"
	}
	if p.TOTPStep > 0 {
		meta["mfa"] = "totp"
	}
	w.audit(u.Tenant, ActionLoginSucceeded, "user/"+u.ID, OutcomeSuccess, meta)
	return &LoginResult{User: u, Session: s}, nil
}

// LoginFailure is one refused login, reported by an API server.
type LoginFailure struct {
	Tenant    string    `json:"tenant"`
	Username  string    `json:"username"`
	UserID    string    `json:"user_id,omitempty"` // empty for an unknown user
	Reason    string    `json:"reason"`
	Time      time.Time `json:"time"`
	IP        string    `json:"ip,omitempty"`
	UserAgent string    `json:"user_agent,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
}

// LockoutPolicy is the brute-force rule: MaxFailures failed logins within
// Window lock the account for LockFor. The proposer's configuration travels
// in the command so every replica applies the same rule.
type LockoutPolicy struct {
	MaxFailures int           `json:"max_failures"`
	Window      time.Duration `json:"window"`
	LockFor     time.Duration `json:"lock_for"`
}

// DefaultLockout is DESIGN.md §7's brute-force threshold: 5 in 15 minutes.
var DefaultLockout = LockoutPolicy{MaxFailures: 5, Window: 15 * time.Minute, LockFor: 15 * time.Minute}

// LoginFailuresCmd is a batch of refused logins (group commit): each becomes
// a login_failed audit entry, and counts toward its user's lockout.
type LoginFailuresCmd struct {
	Failures []LoginFailure `json:"failures"`
	Policy   LockoutPolicy  `json:"policy"`
}

func applyLoginFailures(w *wtx, c *Command) (any, *Error) {
	var p LoginFailuresCmd
	mustDecodePayload(c, &p)
	if c.Header.Principal.Kind != PrincipalSystem {
		return nil, errf(CodeForbidden, "only servers report login failures")
	}
	if len(p.Failures) == 0 || len(p.Failures) > maxAuditBatch {
		return nil, errf(CodeInvalidArgument, "a batch holds 1 to %d login failures", maxAuditBatch)
	}
	if p.Policy.MaxFailures < 1 || p.Policy.Window <= 0 || p.Policy.LockFor <= 0 {
		return nil, errf(CodeInvalidArgument, "lockout policy needs max_failures ≥ 1 and positive window and lock_for")
	}
	ins := make([]AuditInput, len(p.Failures))
	for i, f := range p.Failures {
		in := AuditInput{Tenant: f.Tenant, Time: f.Time, Action: ActionLoginFailed,
			Actor: Actor{Kind: PrincipalUser, ID: f.UserID, Name: f.Username}, Resource: "user/" + f.Username,
			Outcome: OutcomeFailure, IP: f.IP, UserAgent: f.UserAgent, RequestID: f.RequestID, Error: f.Reason}
		if f.UserID != "" {
			in.Resource = "user/" + f.UserID
		}
		if e := in.Validate(); e != nil {
			return nil, e
		}
		if f.Time.IsZero() {
			return nil, errf(CodeInvalidArgument, "login failure time is required")
		}
		ins[i] = in
	}
	users := w.tx.Bucket(bUsers)
	for i, f := range p.Failures {
		in := ins[i]
		if _, ok := w.reader().Tenant(f.Tenant); !ok {
			// No chain for a tenant that does not exist: the cluster's.
			in.Metadata = map[string]string{"tenant": f.Tenant}
			in.Tenant = ""
		}
		w.appendAudit(in)
		if f.UserID == "" {
			continue
		}
		u, ok := w.reader().User(f.Tenant, f.UserID)
		if !ok {
			continue
		}
		at := f.Time.UTC()
		if u.FailedLogins == 0 || at.Sub(u.FirstFailedAt) > p.Policy.Window {
			u.FailedLogins, u.FirstFailedAt = 0, at
		}
		u.FailedLogins++
		if u.FailedLogins >= p.Policy.MaxFailures && !u.Locked(at) {
			u.LockedUntil = at.Add(p.Policy.LockFor)
			w.appendAudit(AuditInput{Tenant: u.Tenant, Time: at, Action: ActionAnomalyDetected,
				Actor: Actor{Kind: PrincipalSystem, Name: "lockout"}, Resource: "user/" + u.ID, Outcome: OutcomeSuccess,
				IP: f.IP, RequestID: f.RequestID, Metadata: map[string]string{"kind": "brute_force",
					"failures": itoa(u.FailedLogins), "locked_until": u.LockedUntil.Format(time.RFC3339), "response": "lock_account"}})
		}
		putJSON(users, tkey(u.Tenant, u.ID), u)
	}
	return len(p.Failures), nil
}

// User returns a tenant's user by id.
func (r *Reader) User(tenant, id string) (*User, bool) {
	var u User
	if !getJSON(r.tx.Bucket(bUsers), tkey(tenant, id), &u) {
		return nil, false
	}
	return &u, true
}

// UserByName returns a tenant's user by username (case-insensitive).
func (r *Reader) UserByName(tenant, username string) (*User, bool) {
	id := r.tx.Bucket(bUserNames).Get(tkey(tenant, strings.ToLower(username)))
	if id == nil {
		return nil, false
	}
	return r.User(tenant, string(id))
}

// Users lists a tenant's users in id order after the cursor, at most limit,
// and returns the next cursor ("" at the end).
func (r *Reader) Users(tenant, after string, limit int) ([]*User, string) {
	c := r.tx.Bucket(bUsers).Cursor()
	prefix := tprefix(tenant)
	start := prefix
	if after != "" {
		start = tkey(tenant, after+"\x00")
	}
	var out []*User
	for k, v := c.Seek(start); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
		if len(out) == limit {
			return out, out[len(out)-1].ID
		}
		var u User
		mustUnmarshal(k, v, &u)
		out = append(out, &u)
	}
	return out, ""
}
