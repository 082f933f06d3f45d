package fsm

import (
	"crypto/ed25519"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
)

const testPHC = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"

// hexID returns a deterministic 32-hex id for tests.
func hexID(s string) string {
	const hx = "0123456789abcdef"
	var b strings.Builder
	for i := 0; b.Len() < 32; i++ {
		c := byte(i)
		if len(s) > 0 {
			c ^= s[i%len(s)]
		}
		b.WriteByte(hx[int(c)%16])
	}
	return b.String()
}

func keyHash(b byte) auth.KeyHash {
	var h auth.KeyHash
	for i := range h {
		h[i] = b
	}
	return h
}

// realUser creates user name with role in tenant (as the operator) and returns
// a principal for it.
func (h *harness) realUser(tenant, name string, role auth.Role) Principal {
	h.t.Helper()
	id := hexID(tenant + "/" + name)
	h.ok(CmdCreateUser, opP, &CreateUserCmd{ID: id, Tenant: tenant, Username: name, Role: role, PasswordHash: testPHC})
	return Principal{Kind: PrincipalUser, ID: id, Tenant: tenant, Role: role, Name: name}
}

func userOf(t testing.TB, f *FSM, tenant, id string) *User {
	t.Helper()
	var u *User
	view(t, f, func(r *Reader) { u, _ = r.User(tenant, id) })
	return u
}

// identityHandlerCases are the handler cases of the identity commands, merged
// into handlerCases so that TestHandlers covers every command type.
func identityHandlerCases() map[CommandType][]step {
	cases := map[CommandType][]step{}
	acmeAdmin := adminOf("acme") // not a real user: refused at apply time
	newUser := func(id, name string, role auth.Role) *CreateUserCmd {
		return &CreateUserCmd{ID: hexID(id), Tenant: "acme", Username: name, Role: role, PasswordHash: testPHC}
	}
	cases[CmdCreateUser] = []step{
		{name: "operator", by: opP, payload: newUser("a", "ann", auth.RoleAdmin), check: func(t *testing.T, h *harness, res *Result) {
			u := userOf(t, h.f, "acme", hexID("a"))
			if u == nil || u.Username != "ann" || u.Role != auth.RoleAdmin || u.PasswordHash != testPHC {
				t.Fatalf("stored user = %+v", u)
			}
			if ten, _ := tenantOf(t, h.f, "acme"); ten.Users != 1 {
				t.Errorf("tenant user count = %d, want 1", ten.Users)
			}
		}},
		{name: "duplicate username any case", by: opP, payload: newUser("b", "ANN", auth.RoleReadOnly), want: CodeConflict},
		{name: "bad username", by: opP, payload: newUser("c", "a b", auth.RoleReadOnly), want: CodeInvalidArgument},
		{name: "bad role", by: opP, payload: newUser("c", "carl", auth.RoleOperator), want: CodeInvalidArgument},
		{name: "bad hash", by: opP, payload: &CreateUserCmd{ID: hexID("c"), Tenant: "acme", Username: "carl", Role: auth.RoleReadOnly, PasswordHash: "plain"}, want: CodeInvalidArgument},
		{name: "fake principal", by: acmeAdmin, payload: newUser("c", "carl", auth.RoleReadOnly), want: CodeUnauthenticated},
		{name: "other tenant", by: adminOf("globex"), payload: newUser("c", "carl", auth.RoleReadOnly), want: CodeNotFound},
	}
	cases[CmdUpdateUser] = []step{
		{name: "unknown user", by: opP, payload: &UpdateUserCmd{Tenant: "acme", ID: hexID("zz")}, want: CodeNotFound},
		{name: "bad tenant", by: opP, payload: &UpdateUserCmd{Tenant: "A B", ID: hexID("zz")}, want: CodeInvalidArgument},
		{name: "tenant member", by: member("acme", auth.RoleReadOnly), payload: &UpdateUserCmd{Tenant: "acme", ID: hexID("zz")}, want: CodeForbidden},
		{name: "create then disable", by: opP, payload: &UpdateUserCmd{Tenant: "acme", ID: hexID("zz")}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, _ *Result) {
				p := h.realUser("acme", "dora", auth.RoleDeveloper)
				yes := true
				h.ok(CmdUpdateUser, opP, &UpdateUserCmd{Tenant: "acme", ID: p.ID, Disabled: &yes})
				if u := userOf(t, h.f, "acme", p.ID); !u.Disabled || u.TokensValidAfter.IsZero() {
					t.Errorf("user after disable = %+v", u)
				}
			}},
		{name: "operator no-op update", by: opP, payload: &UpdateUserCmd{Tenant: "acme", ID: hexID("acme/dora")}},
	}
	cases[CmdDeleteUser] = []step{
		{name: "unknown", by: opP, payload: &DeleteUserCmd{Tenant: "acme", ID: hexID("x")}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, _ *Result) { h.realUser("acme", "eve", auth.RoleReadOnly) }},
		{name: "other tenant admin", by: adminOf("globex"), payload: &DeleteUserCmd{Tenant: "acme", ID: hexID("acme/eve")}, want: CodeNotFound},
		{name: "operator", by: opP, payload: &DeleteUserCmd{Tenant: "acme", ID: hexID("acme/eve")}, check: func(t *testing.T, h *harness, _ *Result) {
			if u := userOf(t, h.f, "acme", hexID("acme/eve")); u != nil {
				t.Errorf("user still stored: %+v", u)
			}
		}},
	}
	cases[CmdSetPassword] = []step{
		{name: "unknown", by: opP, payload: &SetPasswordCmd{Tenant: "acme", ID: hexID("x"), PasswordHash: testPHC}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, _ *Result) { h.realUser("acme", "fay", auth.RoleReadOnly) }},
		{name: "not a hash", by: opP, payload: &SetPasswordCmd{Tenant: "acme", ID: hexID("acme/fay"), PasswordHash: "x"}, want: CodeInvalidArgument},
		{name: "operator reset", by: opP, payload: &SetPasswordCmd{Tenant: "acme", ID: hexID("acme/fay"), PasswordHash: testPHC + "A"}},
	}
	cases[CmdLogin] = []step{
		{name: "not the user", by: opP, payload: &LoginCmd{Tenant: "acme", UserID: hexID("x")}, want: CodeForbidden,
			check: func(t *testing.T, h *harness, _ *Result) { h.realUser("acme", "gus", auth.RoleReadOnly) }},
		{name: "wrong verified hash", by: Principal{Kind: PrincipalUser, ID: hexID("acme/gus"), Tenant: "acme"},
			payload: &LoginCmd{Tenant: "acme", UserID: hexID("acme/gus"), VerifiedHash: "old", Family: hexID("f1"),
				RefreshHash: keyHash(1), RefreshUntil: baseTime.Add(time.Hour)}, want: CodeUnauthenticated},
		{name: "ok", by: Principal{Kind: PrincipalUser, ID: hexID("acme/gus"), Tenant: "acme"},
			payload: &LoginCmd{Tenant: "acme", UserID: hexID("acme/gus"), VerifiedHash: testPHC, Family: hexID("f1"),
				RefreshHash: keyHash(1), RefreshUntil: baseTime.Add(time.Hour)}},
	}
	cases[CmdLoginFailures] = []step{
		{name: "tenant principal", by: acmeAdmin, payload: &LoginFailuresCmd{Failures: []LoginFailure{{Tenant: "acme", Username: "x", Time: baseTime}}, Policy: DefaultLockout}, want: CodeForbidden},
		{name: "no policy", by: sysP, payload: &LoginFailuresCmd{Failures: []LoginFailure{{Tenant: "acme", Username: "x", Time: baseTime}}}, want: CodeInvalidArgument},
		{name: "unknown user", by: sysP, payload: &LoginFailuresCmd{Failures: []LoginFailure{{Tenant: "acme", Username: "x", Reason: "unknown", Time: baseTime}}, Policy: DefaultLockout}},
	}
	cases[CmdRefresh] = []step{
		{name: "unknown family", by: sysP, payload: &RefreshCmd{Family: hexID("nf"), Presented: keyHash(1), Next: keyHash(2)}, want: CodeUnauthenticated},
		{name: "user principal", by: acmeAdmin, payload: &RefreshCmd{Family: hexID("nf"), Presented: keyHash(1), Next: keyHash(2)}, want: CodeForbidden,
			check: func(t *testing.T, h *harness, _ *Result) {
				p := h.realUser("acme", "hal", auth.RoleReadOnly)
				h.ok(CmdLogin, p, &LoginCmd{Tenant: "acme", UserID: p.ID, VerifiedHash: testPHC, Family: hexID("fam"),
					RefreshHash: keyHash(1), RefreshUntil: baseTime.Add(time.Hour)})
			}},
		{name: "rotate", by: sysP, payload: &RefreshCmd{Family: hexID("fam"), Presented: keyHash(1), Next: keyHash(2)}},
	}
	cases[CmdLogout] = []step{
		{name: "operator", by: opP, payload: &LogoutCmd{JTI: hexID("j"), ExpiresAt: baseTime.Add(time.Hour)}, want: CodeForbidden},
		{name: "user", by: member("acme", auth.RoleReadOnly), payload: &LogoutCmd{JTI: hexID("j"), ExpiresAt: baseTime.Add(time.Hour)}},
		{name: "again", by: member("acme", auth.RoleReadOnly), payload: &LogoutCmd{JTI: hexID("j"), ExpiresAt: baseTime.Add(time.Hour)}, want: CodeUnauthenticated},
	}
	mkKey := func(id string, role auth.Role) *CreateAPIKeyCmd {
		return &CreateAPIKeyCmd{ID: hexID(id), Tenant: "acme", Name: "ci", Role: role, Hash: keyHash(7)}
	}
	cases[CmdCreateAPIKey] = []step{
		{name: "operator", by: opP, payload: mkKey("k1", auth.RoleDeveloper)},
		{name: "duplicate", by: opP, payload: mkKey("k1", auth.RoleDeveloper), want: CodeConflict},
		{name: "no hash", by: opP, payload: &CreateAPIKeyCmd{ID: hexID("k2"), Tenant: "acme", Name: "x", Role: auth.RoleReadOnly}, want: CodeInvalidArgument},
		{name: "other tenant", by: adminOf("globex"), payload: mkKey("k3", auth.RoleReadOnly), want: CodeNotFound},
	}
	cases[CmdRevokeAPIKey] = []step{
		{name: "unknown", by: opP, payload: &RevokeAPIKeyCmd{Tenant: "acme", ID: hexID("k")}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, _ *Result) { h.ok(CmdCreateAPIKey, opP, mkKey("k", auth.RoleReadOnly)) }},
		{name: "operator", by: opP, payload: &RevokeAPIKeyCmd{Tenant: "acme", ID: hexID("k")}},
		{name: "twice", by: opP, payload: &RevokeAPIKeyCmd{Tenant: "acme", ID: hexID("k")}, want: CodeFailedPrecondition},
	}
	cases[CmdTouchAPIKeys] = []step{
		{name: "operator", by: opP, payload: &TouchAPIKeysCmd{Uses: []KeyUse{{ID: hexID("k"), Count: 1, LastUsed: baseTime}}}, want: CodeForbidden},
		{name: "empty", by: sysP, payload: &TouchAPIKeysCmd{}, want: CodeInvalidArgument},
		{name: "unknown key skipped", by: sysP, payload: &TouchAPIKeysCmd{Uses: []KeyUse{{ID: hexID("k"), Count: 1, LastUsed: baseTime}}}},
	}
	rule := func(id, tenant, cidr string) *AddIPRuleCmd {
		return &AddIPRuleCmd{ID: hexID(id), Tenant: tenant, CIDR: cidr, Action: IPBlock}
	}
	cases[CmdAddIPRule] = []step{
		{name: "global", by: opP, payload: rule("r1", "", "203.0.113.0/24")},
		{name: "tenant", by: opP, payload: rule("r2", "acme", "2001:db8::/32")},
		{name: "host bits", by: opP, payload: rule("r3", "acme", "203.0.113.7/24"), want: CodeInvalidArgument},
		{name: "global by tenant admin", by: acmeAdmin, payload: rule("r4", "", "198.51.100.0/24"), want: CodeForbidden},
	}
	cases[CmdRemoveIPRule] = []step{
		{name: "unknown", by: opP, payload: &RemoveIPRuleCmd{ID: hexID("r")}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, _ *Result) { h.ok(CmdAddIPRule, opP, rule("r", "", "10.0.0.0/8")) }},
		{name: "wrong scope", by: opP, payload: &RemoveIPRuleCmd{Tenant: "acme", ID: hexID("r")}, want: CodeNotFound},
		{name: "global", by: opP, payload: &RemoveIPRuleCmd{ID: hexID("r")}},
	}
	pub := make([]byte, ed25519.PublicKeySize)
	cases[CmdAddSigningKey] = []step{
		{name: "first", by: sysP, payload: &AddSigningKeyCmd{KID: "k1", Alg: auth.AlgEdDSA, PublicKey: pub, Wrapped: []byte("w"), KeyRef: "kms"}},
		{name: "rotate", by: opP, payload: &AddSigningKeyCmd{KID: "k2", Alg: auth.AlgEdDSA, PublicKey: pub, Wrapped: []byte("w"), KeyRef: "kms"},
			check: func(t *testing.T, h *harness, _ *Result) {
				var ks []*SigningKey
				view(t, h.f, func(r *Reader) { ks = r.SigningKeys() })
				if len(ks) != 2 || ks[0].State != auth.KeyVerifyOnly || ks[1].State != auth.KeyActive {
					t.Errorf("keys after rotation = %+v", ks)
				}
			}},
		{name: "tenant admin", by: acmeAdmin, payload: &AddSigningKeyCmd{KID: "k3", Alg: auth.AlgEdDSA, PublicKey: pub, Wrapped: []byte("w")}, want: CodeForbidden},
		{name: "HS256 with public part", by: opP, payload: &AddSigningKeyCmd{KID: "k4", Alg: auth.AlgHS256, PublicKey: pub, Wrapped: []byte("w")}, want: CodeInvalidArgument},
	}
	cases[CmdSetSigningKeyState] = []step{
		{name: "unknown", by: opP, payload: &SetSigningKeyStateCmd{KID: "k1", State: auth.KeyRetired}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, _ *Result) {
				h.ok(CmdAddSigningKey, opP, &AddSigningKeyCmd{KID: "k1", Alg: auth.AlgEdDSA, PublicKey: pub, Wrapped: []byte("w")})
			}},
		{name: "active", by: opP, payload: &SetSigningKeyStateCmd{KID: "k1", State: auth.KeyRetired}, want: CodeFailedPrecondition,
			check: func(t *testing.T, h *harness, _ *Result) {
				h.ok(CmdAddSigningKey, opP, &AddSigningKeyCmd{KID: "k2", Alg: auth.AlgEdDSA, PublicKey: pub, Wrapped: []byte("w")})
			}},
		{name: "retire old", by: opP, payload: &SetSigningKeyStateCmd{KID: "k1", State: auth.KeyRetired}},
	}
	cases[CmdPruneExpired] = []step{
		{name: "future", by: opP, payload: &PruneExpiredCmd{Before: baseTime.Add(24 * time.Hour)}, want: CodeInvalidArgument},
		{name: "tenant admin", by: acmeAdmin, payload: &PruneExpiredCmd{Before: baseTime}, want: CodeForbidden},
		{name: "nothing to prune", by: sysP, payload: &PruneExpiredCmd{Before: baseTime}},
	}
	return cases
}

// TestIdentityAuthorizationInApply: Apply re-checks the principal against the
// state: a disabled user, a lowered role, a revoked or expired key, a
// suspended tenant, and creating credentials above one's own role.
func TestIdentityAuthorizationInApply(t *testing.T) {
	h := seeded(t)
	admin := h.realUser("acme", "admin", auth.RoleAdmin)
	dev := h.realUser("acme", "dev", auth.RoleDeveloper)
	ro := h.realUser("acme", "ro", auth.RoleReadOnly)
	gAdmin := h.realUser("globex", "admin", auth.RoleAdmin)

	key := func(id string, role auth.Role) *CreateAPIKeyCmd {
		return &CreateAPIKeyCmd{ID: hexID(id), Tenant: "acme", Name: id, Role: role, Hash: keyHash(3)}
	}
	// Escalation: a developer cannot mint an admin key or create users at all.
	h.fails(CmdCreateAPIKey, dev, key("d-admin", auth.RoleAdmin), CodeForbidden)
	h.ok(CmdCreateAPIKey, dev, key("d-dev", auth.RoleDeveloper))
	h.fails(CmdCreateUser, dev, &CreateUserCmd{ID: hexID("x"), Tenant: "acme", Username: "x", Role: auth.RoleReadOnly, PasswordHash: testPHC}, CodeForbidden)
	h.fails(CmdCreateAPIKey, ro, key("ro-key", auth.RoleReadOnly), CodeForbidden) // readonly cannot write
	h.fails(CmdCreateTenant, admin, &CreateTenantCmd{ID: "evil"}, CodeForbidden)
	// Cross-tenant: globex's admin is told acme's records do not exist.
	h.fails(CmdDeleteUser, gAdmin, &DeleteUserCmd{Tenant: "acme", ID: dev.ID}, CodeNotFound)
	h.fails(CmdRevokeAPIKey, gAdmin, &RevokeAPIKeyCmd{Tenant: "globex", ID: hexID("d-dev")}, CodeNotFound)

	// A key made by the developer works as a principal until revoked.
	kp := Principal{Kind: PrincipalAPIKey, ID: hexID("d-dev"), Tenant: "acme", Role: auth.RoleDeveloper}
	h.ok(CmdCreateAPIKey, kp, key("via-key", auth.RoleReadOnly))
	h.ok(CmdRevokeAPIKey, admin, &RevokeAPIKeyCmd{Tenant: "acme", ID: kp.ID})
	h.fails(CmdCreateAPIKey, kp, key("after-revoke", auth.RoleReadOnly), CodeUnauthenticated)

	// An expired key is refused at apply time.
	exp := key("short", auth.RoleDeveloper)
	exp.ExpiresAt = time.Unix(0, h.header(opP).Time).Add(2 * time.Second)
	h.ok(CmdCreateAPIKey, admin, exp)
	h.ok(CmdNoop, opP, nil)
	h.ok(CmdNoop, opP, nil)
	h.fails(CmdCreateAPIKey, Principal{Kind: PrincipalAPIKey, ID: exp.ID, Tenant: "acme", Role: auth.RoleDeveloper}, key("late", auth.RoleReadOnly), CodeUnauthenticated)

	// Role lowered after the API checked: Apply refuses with the old role.
	lower := auth.RoleReadOnly
	h.ok(CmdUpdateUser, admin, &UpdateUserCmd{Tenant: "acme", ID: dev.ID, Role: &lower})
	if u := userOf(t, h.f, "acme", dev.ID); u.TokensValidAfter.Before(time.Unix(0, h.header(opP).Time).Add(-2 * time.Second)) {
		t.Errorf("tokens_valid_after not bumped on role change: %v", u.TokensValidAfter)
	}
	h.fails(CmdCreateAPIKey, dev, key("stale-role", auth.RoleReadOnly), CodeForbidden)
	// Disabled user.
	yes := true
	h.ok(CmdUpdateUser, admin, &UpdateUserCmd{Tenant: "acme", ID: ro.ID, Disabled: &yes})
	h.fails(CmdSetPassword, ro, &SetPasswordCmd{Tenant: "acme", ID: ro.ID, PasswordHash: testPHC, Expect: testPHC}, CodeUnauthenticated)
	// An admin cannot raise anyone above admin, nor a developer touch an admin.
	op := auth.RoleOperator
	h.fails(CmdUpdateUser, admin, &UpdateUserCmd{Tenant: "acme", ID: dev.ID, Role: &op}, CodeInvalidArgument)
	// Suspension stops every tenant principal, keys included.
	h.ok(CmdCreateAPIKey, admin, key("k-susp", auth.RoleAdmin))
	h.ok(CmdSetTenantStatus, opP, &SetTenantStatusCmd{ID: "acme", Status: TenantSuspended})
	h.fails(CmdCreateAPIKey, admin, key("while-suspended", auth.RoleReadOnly), CodeForbidden)
	h.fails(CmdAddIPRule, Principal{Kind: PrincipalAPIKey, ID: hexID("k-susp"), Tenant: "acme", Role: auth.RoleAdmin},
		&AddIPRuleCmd{ID: hexID("r"), Tenant: "acme", CIDR: "10.0.0.0/8", Action: IPBlock}, CodeForbidden)
	verifyAll(t, h.f)
}

// TestLockoutAndRefreshReuse: five failures in the window lock the account
// (every replica agrees: it is state), and a replayed refresh token revokes
// its family.
func TestLockoutAndRefreshReuse(t *testing.T) {
	h := seeded(t)
	u := h.realUser("acme", "ann", auth.RoleDeveloper)
	fail := func(i int) LoginFailure {
		return LoginFailure{Tenant: "acme", Username: "ann", UserID: u.ID, Reason: "wrong password",
			Time: baseTime.Add(time.Duration(i) * time.Minute)}
	}
	h.ok(CmdLoginFailures, sysP, &LoginFailuresCmd{Failures: []LoginFailure{fail(0), fail(1), fail(2), fail(3)}, Policy: DefaultLockout})
	if got := userOf(t, h.f, "acme", u.ID); got.FailedLogins != 4 || got.Locked(baseTime.Add(5*time.Minute)) {
		t.Fatalf("after 4 failures: %+v", got)
	}
	h.ok(CmdLoginFailures, sysP, &LoginFailuresCmd{Failures: []LoginFailure{fail(4)}, Policy: DefaultLockout})
	got := userOf(t, h.f, "acme", u.ID)
	if !got.Locked(baseTime.Add(5*time.Minute)) || got.Locked(baseTime.Add(20*time.Minute)) {
		t.Fatalf("after 5 failures in 15 min: locked until %v, want 15 min after the fifth", got.LockedUntil)
	}
	var anomalies int
	for _, e := range allAudit(t, h.f, "acme") {
		if e.Action == ActionAnomalyDetected && e.Metadata["kind"] == "brute_force" {
			anomalies++
		}
	}
	if anomalies != 1 {
		t.Errorf("brute_force anomalies = %d, want 1", anomalies)
	}
	// Failures spread beyond the window do not lock.
	v := h.realUser("acme", "vic", auth.RoleDeveloper)
	for i := range 6 {
		h.ok(CmdLoginFailures, sysP, &LoginFailuresCmd{Failures: []LoginFailure{{Tenant: "acme", Username: "vic", UserID: v.ID,
			Reason: "wrong password", Time: baseTime.Add(time.Duration(i) * 16 * time.Minute)}}, Policy: DefaultLockout})
	}
	if got := userOf(t, h.f, "acme", v.ID); !got.LockedUntil.IsZero() {
		t.Errorf("failures 16 min apart locked the account: %+v", got)
	}

	// Refresh: rotate, then replay the first token → reuse, family revoked.
	up := Principal{Kind: PrincipalUser, ID: v.ID, Tenant: "acme", Role: auth.RoleDeveloper}
	fam := hexID("family")
	h.ok(CmdLogin, up, &LoginCmd{Tenant: "acme", UserID: v.ID, VerifiedHash: testPHC, Family: fam, RefreshHash: keyHash(1), RefreshUntil: baseTime.Add(48 * time.Hour)})
	r1 := h.ok(CmdRefresh, sysP, &RefreshCmd{Family: fam, Presented: keyHash(1), Next: keyHash(2)}).(*RefreshResult)
	if r1.Verdict != RefreshRotated || r1.User.ID != v.ID {
		t.Fatalf("first refresh = %+v", r1)
	}
	r2 := h.ok(CmdRefresh, sysP, &RefreshCmd{Family: fam, Presented: keyHash(1), Next: keyHash(3)}).(*RefreshResult)
	if r2.Verdict != RefreshReuse || !r2.Session.Revoked {
		t.Fatalf("replayed refresh = %+v, want reuse and a revoked family", r2)
	}
	h.fails(CmdRefresh, sysP, &RefreshCmd{Family: fam, Presented: keyHash(2), Next: keyHash(4)}, CodeUnauthenticated)
	var revoked bool
	view(t, h.f, func(r *Reader) { revoked = r.FamilyRevoked(fam) })
	if !revoked {
		t.Error("family not revoked after reuse")
	}
	verifyAll(t, h.f)
}

// TestPruneExpired drops expired revocations, sessions and IP rules.
func TestPruneExpired(t *testing.T) {
	h := seeded(t)
	u := member("acme", auth.RoleReadOnly)
	for i := range 3 {
		h.ok(CmdLogout, u, &LogoutCmd{JTI: hexID(fmt.Sprint("j", i)), ExpiresAt: baseTime.Add(time.Duration(i) * time.Hour)})
	}
	r := &AddIPRuleCmd{ID: hexID("r"), Tenant: "acme", CIDR: "10.0.0.0/8", Action: IPBlock, ExpiresAt: baseTime.Add(90 * time.Minute)}
	h.ok(CmdAddIPRule, opP, r)
	for range 2 {
		h.ok(CmdNoop, opP, nil)
	}
	// Proposer time is baseTime+N s; prune everything expiring before +100 min
	// needs a header time after that, so advance the harness clock.
	h.index += 7000
	n := h.ok(CmdPruneExpired, sysP, &PruneExpiredCmd{Before: baseTime.Add(100 * time.Minute)}).(PruneCounts)
	if n.Revocations != 2 || n.IPRules != 1 {
		t.Fatalf("pruned %+v, want 2 revocations and 1 IP rule", n)
	}
	var left []*Revocation
	view(t, h.f, func(rd *Reader) { left = rd.Revocations() })
	if len(left) != 1 {
		t.Errorf("revocations left = %d, want 1", len(left))
	}
	if ten, _ := tenantOf(t, h.f, "acme"); ten.IPRules != 0 {
		t.Errorf("tenant ip rule count = %d after prune", ten.IPRules)
	}
}
