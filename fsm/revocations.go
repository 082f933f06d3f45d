package fsm

import (
	"time"

	"github.com/allsource/guard/auth"
)

// bRefresh holds refresh sessions: family id → RefreshSession. It is created
// on first use, so stores written before it existed still load.
var bRefresh = []byte("refresh_sessions")

// RefreshSession is the server-side state of one login's refresh tokens: the
// keyed hash of the one token that may be exchanged, the hashes of tokens
// already rotated away (a replay of one of them is reuse: the family is
// revoked), and whose session it is.
type RefreshSession struct {
	auth.RefreshFamily
	Tenant    string    `json:"tenant"`
	UserID    string    `json:"user_id"`
	CreatedAt time.Time `json:"created_at"`
	RotatedAt time.Time `json:"rotated_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Revocation is an access token revoked before its expiry. It is dropped by
// CmdPruneExpired once the token would have expired anyway.
type Revocation struct {
	JTI       string    `json:"jti"`
	Tenant    string    `json:"tenant"`
	Subject   string    `json:"subject,omitempty"`
	ExpiresAt time.Time `json:"expires_at"`
	RevokedAt time.Time `json:"revoked_at"`
}

// RefreshCmd exchanges a refresh token. The API server computes the keyed hash
// of the presented token (the pepper never enters the state machine); Apply
// compares it with the family's hashes in constant time: the current one
// rotates to Next, an old one is reuse and revokes the whole family.
type RefreshCmd struct {
	Family    string       `json:"family"`
	Presented auth.KeyHash `json:"presented"`
	Next      auth.KeyHash `json:"next"`
}

// RefreshVerdict strings of RefreshResult.
const (
	RefreshRotated = "rotated"
	RefreshReuse   = "reused"
)

// RefreshResult is CmdRefresh's value. A detected reuse is a successful
// command (it revokes the family) whose verdict the API answers with 401.
type RefreshResult struct {
	Verdict string          `json:"verdict"`
	Session *RefreshSession `json:"session"`
	User    *User           `json:"user,omitempty"`
}

func applyRefresh(w *wtx, c *Command) (any, *Error) {
	var p RefreshCmd
	mustDecodePayload(c, &p)
	if c.Header.Principal.Kind != PrincipalSystem {
		return nil, errf(CodeForbidden, "only servers propose refreshes")
	}
	if e := ValidObjectID("refresh family", p.Family); e != nil {
		return nil, e
	}
	if p.Presented.IsZero() || p.Next.IsZero() {
		return nil, errf(CodeInvalidArgument, "presented and next hashes are required")
	}
	s, ok := w.reader().RefreshSession(p.Family)
	now := w.now()
	if !ok || s.Revoked || !now.Before(s.ExpiresAt) {
		return nil, errf(CodeUnauthenticated, "invalid refresh token")
	}
	current := s.Current.Equal(p.Presented)
	reused := false
	for _, h := range s.Previous {
		reused = h.Equal(p.Presented) || reused
	}
	actor := Actor{Kind: PrincipalUser, ID: s.UserID}
	entry := func(a Action, outcome Outcome, meta map[string]string) {
		w.appendAudit(AuditInput{Tenant: s.Tenant, Time: now, Action: a, Actor: actor, Resource: "session/" + s.ID,
			Outcome: outcome, IP: w.hdr.IP, UserAgent: w.hdr.UserAgent, RequestID: w.hdr.RequestID, Metadata: meta})
	}
	switch {
	case current:
		u, ok := w.reader().User(s.Tenant, s.UserID)
		if !ok || u.Disabled {
			return nil, errf(CodeUnauthenticated, "invalid refresh token")
		}
		if _, e := activeTenant(w, Principal{Kind: PrincipalUser, Tenant: s.Tenant}, s.Tenant); e != nil {
			return nil, e
		}
		actor.Name, actor.Role = u.Username, string(u.Role)
		ns := *s
		ns.RefreshFamily = s.RefreshFamily.Rotate(p.Next, auth.DefaultRefreshKeep)
		ns.RotatedAt = now
		putJSON(w.wbucket(bRefresh), []byte(s.ID), &ns)
		entry(ActionTokenRefreshed, OutcomeSuccess, nil)
		return &RefreshResult{Verdict: RefreshRotated, Session: &ns, User: u}, nil
	case reused:
		ns := *s
		ns.Revoked = true
		putJSON(w.wbucket(bRefresh), []byte(s.ID), &ns)
		w.changed(ChangeRevocation, s.Tenant, "family/"+s.ID, false)
		entry(ActionTokenReuse, OutcomeFailure, map[string]string{"response": "family_revoked"})
		return &RefreshResult{Verdict: RefreshReuse, Session: &ns}, nil
	}
	return nil, errf(CodeUnauthenticated, "invalid refresh token")
}

// LogoutCmd revokes the caller's access token (by jti, until it would have
// expired) and its refresh family.
type LogoutCmd struct {
	JTI       string    `json:"jti"`
	ExpiresAt time.Time `json:"expires_at"`
	Family    string    `json:"family,omitempty"`
}

func applyLogout(w *wtx, c *Command) (any, *Error) {
	var p LogoutCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if pr.Kind != PrincipalUser {
		return nil, errf(CodeForbidden, "only a signed-in user logs out")
	}
	if e := ValidObjectID("token", p.JTI); e != nil {
		return nil, e
	}
	if p.ExpiresAt.IsZero() {
		return nil, errf(CodeInvalidArgument, "expires_at is required")
	}
	var s *RefreshSession
	if p.Family != "" {
		if e := ValidObjectID("refresh family", p.Family); e != nil {
			return nil, e
		}
		var ok bool
		if s, ok = w.reader().RefreshSession(p.Family); ok && (s.UserID != pr.ID || s.Tenant != pr.Tenant) {
			return nil, errf(CodeNotFound, "session not found")
		}
	}
	if w.reader().Revoked(p.JTI) {
		return nil, errf(CodeUnauthenticated, "token already revoked")
	}
	now := w.now()
	putJSON(w.tx.Bucket(bRevocations), []byte(p.JTI), &Revocation{JTI: p.JTI, Tenant: pr.Tenant, Subject: pr.ID,
		ExpiresAt: p.ExpiresAt.UTC(), RevokedAt: now})
	w.changed(ChangeRevocation, pr.Tenant, p.JTI, false)
	if s != nil && !s.Revoked {
		s.Revoked = true
		putJSON(w.wbucket(bRefresh), []byte(s.ID), s)
		w.changed(ChangeRevocation, pr.Tenant, "family/"+s.ID, false)
	}
	w.audit(pr.Tenant, ActionLogout, "user/"+pr.ID, OutcomeSuccess, map[string]string{"jti": p.JTI})
	return nil, nil
}

// PruneExpiredCmd drops records that can no longer matter at Before:
// revocations of tokens expired by then, refresh sessions expired by then,
// and IP rules whose expiry has passed.
type PruneExpiredCmd struct {
	Before time.Time `json:"before"`
}

// PruneCounts is CmdPruneExpired's value.
type PruneCounts struct {
	Revocations int `json:"revocations"`
	Sessions    int `json:"sessions"`
	IPRules     int `json:"ip_rules"`
}

func applyPruneExpired(w *wtx, c *Command) (any, *Error) {
	var p PruneExpiredCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if p.Before.IsZero() || p.Before.After(w.now()) {
		return nil, errf(CodeInvalidArgument, "before is required and must not be in the future")
	}
	var n PruneCounts
	r := w.reader()
	for _, rv := range r.ExpiredRevocations(p.Before, maxAuditBatch) {
		del(w.tx.Bucket(bRevocations), []byte(rv.JTI))
		w.changed(ChangeRevocation, rv.Tenant, rv.JTI, true)
		n.Revocations++
	}
	for _, s := range r.ExpiredSessions(p.Before, maxAuditBatch) {
		del(w.tx.Bucket(bRefresh), []byte(s.ID))
		n.Sessions++
	}
	for _, ru := range r.ExpiredIPRules(p.Before, maxAuditBatch) {
		del(w.tx.Bucket(bIPRules), tkey(ru.Tenant, ru.ID))
		w.changed(ChangeIPRule, ru.Tenant, ru.ID, true)
		if ru.Tenant != "" {
			if t, ok := r.Tenant(ru.Tenant); ok && t.IPRules > 0 {
				t.IPRules--
				w.saveTenantCounters(t)
			}
		}
		n.IPRules++
	}
	if n == (PruneCounts{}) {
		return n, nil
	}
	w.audit("", ActionConfigChanged, "expired-records", OutcomeSuccess, map[string]string{"op": "prune",
		"revocations": itoa(n.Revocations), "sessions": itoa(n.Sessions), "ip_rules": itoa(n.IPRules)})
	return n, nil
}

// RefreshSession returns a refresh family's session.
func (r *Reader) RefreshSession(family string) (*RefreshSession, bool) {
	b := bucket(r.tx, bRefresh)
	if b == nil {
		return nil, false
	}
	var s RefreshSession
	if !getJSON(b, []byte(family), &s) {
		return nil, false
	}
	return &s, true
}

// FamilyRevoked reports whether a refresh family exists and is revoked (its
// access tokens are then refused too).
func (r *Reader) FamilyRevoked(family string) bool {
	s, ok := r.RefreshSession(family)
	return ok && s.Revoked
}

// Revoked reports whether the token id is revoked.
func (r *Reader) Revoked(jti string) bool {
	return r.tx.Bucket(bRevocations).Get([]byte(jti)) != nil
}

// Revocations lists revoked token ids.
func (r *Reader) Revocations() []*Revocation {
	var out []*Revocation
	_ = r.tx.Bucket(bRevocations).ForEach(func(k, v []byte) error {
		var rv Revocation
		mustUnmarshal(k, v, &rv)
		out = append(out, &rv)
		return nil
	})
	return out
}

// ExpiredRevocations returns at most limit revocations that expire before t.
func (r *Reader) ExpiredRevocations(t time.Time, limit int) []*Revocation {
	var out []*Revocation
	c := r.tx.Bucket(bRevocations).Cursor()
	for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
		var rv Revocation
		mustUnmarshal(k, v, &rv)
		if rv.ExpiresAt.Before(t) {
			out = append(out, &rv)
		}
	}
	return out
}

// ExpiredSessions returns at most limit refresh sessions that expire before t.
func (r *Reader) ExpiredSessions(t time.Time, limit int) []*RefreshSession {
	b := bucket(r.tx, bRefresh)
	if b == nil {
		return nil
	}
	var out []*RefreshSession
	c := b.Cursor()
	for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
		var s RefreshSession
		mustUnmarshal(k, v, &s)
		if s.ExpiresAt.Before(t) {
			out = append(out, &s)
		}
	}
	return out
}
