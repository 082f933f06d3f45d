package enforcement

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/tally"
)

func expect(t *testing.T, d Decision, status int, code string) {
	t.Helper()
	if d.Status != status || d.Code != code || d.Allowed != (status == http.StatusOK) {
		t.Fatalf("decision: want %d %q, got %d %q allowed=%v (%s)", status, code, d.Status, d.Code, d.Allowed, d.Message)
	}
}

func TestPipelineAPIKey(t *testing.T) {
	f := newFixture(t)
	p, a := f.pipeline(nil)
	d := p.Decide(req("GET", "/orders", "198.51.100.7:5555", "X-API-Key", f.key))
	expect(t, d, 200, "")
	if d.Identity.Tenant != "acme" || d.Identity.Subject != f.keyID || d.Identity.Role != auth.RoleReadOnly || d.Identity.Credential != CredentialAPIKey {
		t.Fatalf("identity: %+v", d.Identity)
	}
	if a.uses[f.keyID] != 1 {
		t.Fatalf("key use not recorded: %v", a.uses)
	}
	// Bearer works too.
	expect(t, p.Decide(req("GET", "/orders", "198.51.100.7:5555", "Authorization", "Bearer "+f.key)), 200, "")
	// A readonly key cannot write.
	expect(t, p.Decide(req("POST", "/orders", "198.51.100.7:5555", "X-API-Key", f.key)), 403, CodeForbidden)

	forged := forgeKey(f.keyID)
	if _, err := auth.ParseAPIKey(forged); err != nil {
		t.Fatalf("forged key does not parse: %v", err)
	}
	d = p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", forged))
	expect(t, d, 401, CodeUnauthenticated)
	if d.Identity.Tenant != "acme" {
		t.Fatalf("a bad secret for a known key id is attributed to its tenant: %+v", d.Identity)
	}
	for _, bad := range []string{"ask_nonsense", f.key[:len(f.key)-1] + "x", "Bearer-less"} {
		expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", bad)), 401, CodeUnauthenticated)
	}
	unknown, _, _ := auth.NewAPIKey(nil)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", unknown)), 401, CodeUnauthenticated)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555")), 401, CodeUnauthenticated)

	// Revocation and expiry come with the next view.
	rec, _ := f.view.APIKey(f.keyID)
	revoked := *rec
	revoked.RevokedAt = f.clock.Now()
	p.SetView(f.apply(f.view, 11, fsm.ViewRecord{Kind: fsm.ChangeAPIKey, Tenant: "acme", Key: f.keyID, APIKey: &revoked}))
	d = p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", f.key))
	expect(t, d, 401, CodeUnauthenticated)
	if d.Message != "the API key is revoked" {
		t.Fatalf("message %q", d.Message)
	}
	expiring := *rec
	expiring.ExpiresAt = f.clock.Now().Add(time.Minute)
	p.SetView(f.apply(f.view, 12, fsm.ViewRecord{Kind: fsm.ChangeAPIKey, Tenant: "acme", Key: f.keyID, APIKey: &expiring}))
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", f.key)), 200, "")
	f.clock.Advance(time.Minute)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", f.key)), 401, CodeUnauthenticated)

	// A suspended tenant's key is refused with 403.
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", f.frozenKey)), 403, CodeForbidden)

	var fails int
	for _, e := range a.entries {
		if e.Action == fsm.ActionAuthFailed && e.Outcome == fsm.OutcomeFailure {
			fails++
		}
	}
	if fails < 5 {
		t.Fatalf("auth failures audited: %d (%+v)", fails, a.entries)
	}
}

func TestPipelineAPIKeyWithoutPepperIsUnavailable(t *testing.T) {
	f := newFixture(t)
	p, _ := f.pipeline(nil)
	p.SetView(f.apply(f.view, 11, fsm.ViewRecord{Kind: fsm.ChangeSecret, Key: fsm.SecretPepper, Deleted: true}))
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "X-API-Key", f.key)), 503, CodeUnavailable)
}

func TestPipelineJWT(t *testing.T) {
	f := newFixture(t)
	p, _ := f.pipeline(nil)
	now := f.clock.Now()
	tok := f.token("0123456789abcdef0123456789abcde1", f.userID, auth.RoleDeveloper, now)
	d := p.Decide(req("POST", "/orders", "198.51.100.7:5555", "Authorization", "Bearer "+tok))
	expect(t, d, 200, "")
	if d.Identity.Subject != f.userID || d.Identity.Credential != CredentialJWT || d.Identity.Role != auth.RoleDeveloper {
		t.Fatalf("identity: %+v", d.Identity)
	}
	for range 3 {
		expect(t, p.Decide(req("GET", "/orders", "198.51.100.7:5555", "Authorization", "Bearer "+tok)), 200, "")
	}
	st := p.Stats()
	if st.TokenCacheMiss != 1 || st.TokenCacheHits != 3 {
		t.Fatalf("token cache: %d misses, %d hits; want 1 and 3", st.TokenCacheMiss, st.TokenCacheHits)
	}

	// Revoking the jti refuses the cached token at once.
	v2 := f.apply(f.view, 11, fsm.ViewRecord{Kind: fsm.ChangeRevocation, Tenant: "acme", Key: "0123456789abcdef0123456789abcde1",
		Revocation: &fsm.ViewRevocation{JTI: "0123456789abcdef0123456789abcde1", Tenant: "acme", ExpiresAt: now.Add(time.Hour)}})
	p.SetView(v2)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+tok)), 401, CodeUnauthenticated)

	// So does revoking its refresh family, disabling the user, or moving
	// tokens_valid_after past its iat.
	tok2 := f.token("0123456789abcdef0123456789abcde2", f.userID, auth.RoleDeveloper, now)
	p.SetView(f.view)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+tok2)), 200, "")
	for _, rec := range []fsm.ViewRecord{
		{Kind: fsm.ChangeRevocation, Tenant: "acme", Key: "family/fam1", Revocation: &fsm.ViewRevocation{Family: "fam1", Tenant: "acme"}},
		{Kind: fsm.ChangeUser, Tenant: "acme", Key: f.userID, User: &fsm.ViewUser{ID: f.userID, Tenant: "acme", Role: auth.RoleDeveloper, Disabled: true}},
		{Kind: fsm.ChangeUser, Tenant: "acme", Key: f.userID, User: &fsm.ViewUser{ID: f.userID, Tenant: "acme", Role: auth.RoleDeveloper,
			TokensValidAfter: now.Add(time.Second)}},
		{Kind: fsm.ChangeUser, Tenant: "acme", Key: f.userID, User: &fsm.ViewUser{ID: f.userID, Tenant: "acme", Role: auth.RoleReadOnly}},
		{Kind: fsm.ChangeUser, Tenant: "acme", Key: f.userID, Deleted: true},
		{Kind: fsm.ChangeTenant, Tenant: "acme", Key: "acme", TenantRec: &fsm.ViewTenant{ID: "acme", Status: fsm.TenantSuspended}},
	} {
		p.SetView(f.apply(f.view, 12, rec))
		d := p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+tok2))
		if d.Allowed {
			t.Fatalf("token accepted after %s %s change", rec.Kind, rec.Key)
		}
	}

	// Retiring the signing key invalidates cached tokens (new key generation).
	p.SetView(f.view)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+tok2)), 200, "")
	sk := *f.view.signing["k1"]
	sk.State = auth.KeyRetired
	p.SetView(f.apply(f.view, 13, fsm.ViewRecord{Kind: fsm.ChangeSigningKey, Key: "k1", SigningKey: &sk}))
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+tok2)), 401, CodeUnauthenticated)

	// Expired tokens fail even when cached.
	p.SetView(f.view)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+tok2)), 200, "")
	f.clock.Advance(time.Hour + time.Minute)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+tok2)), 401, CodeUnauthenticated)

	// Garbage, alg none and tokens for another audience.
	for _, bad := range []string{"a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "not-a-token"} {
		expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+bad)), 401, CodeUnauthenticated)
	}
	otherAud, _ := auth.Mint(auth.Claims{Subject: f.userID, TenantID: "acme", Role: auth.RoleDeveloper, Issuer: DefaultIssuer,
		Audience: []string{"elsewhere"}, IssuedAt: f.clock.Now(), ExpiresAt: f.clock.Now().Add(time.Hour), ID: "x", Use: auth.TokenAccess}, f.signer)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:5555", "Authorization", "Bearer "+otherAud)), 401, CodeUnauthenticated)
}

func TestPipelineIPFilter(t *testing.T) {
	f := newFixture(t)
	p, a := f.pipeline(func(c *PipelineConfig) {
		c.Resolver, _ = NewClientIPResolver([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	})
	rule := func(tenant, id, cidr string, act fsm.IPAction) fsm.ViewRecord {
		return fsm.ViewRecord{Kind: fsm.ChangeIPRule, Tenant: tenant, Key: id, IPRule: &fsm.ViewIPRule{ID: id, Tenant: tenant, CIDR: cidr, Action: act}}
	}
	v := f.apply(f.view, 11, rule("", "g1", "203.0.113.0/24", fsm.IPBlock), rule("acme", "t1", "198.51.100.0/24", fsm.IPBlock))
	p.SetView(v)
	// Global block, before any authentication.
	d := p.Decide(req("GET", "/", "203.0.113.9:1", "X-API-Key", f.key))
	expect(t, d, 403, CodeForbidden)
	// Behind a trusted proxy, the forwarded address counts.
	expect(t, p.Decide(req("GET", "/", "10.1.1.1:1", "X-API-Key", f.key, "X-Forwarded-For", "203.0.113.9")), 403, CodeForbidden)
	// A client cannot spoof X-Forwarded-For from outside the trusted proxies.
	expect(t, p.Decide(req("GET", "/", "192.0.2.1:1", "X-API-Key", f.key, "X-Forwarded-For", "198.51.100.1")), 200, "")
	// Tenant block.
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:1", "X-API-Key", f.key)), 403, CodeForbidden)
	// Tenant allowlist: only its addresses.
	v = f.apply(f.view, 12, rule("acme", "t2", "192.0.2.0/28", fsm.IPAllow))
	p.SetView(v)
	expect(t, p.Decide(req("GET", "/", "192.0.2.3:1", "X-API-Key", f.key)), 200, "")
	expect(t, p.Decide(req("GET", "/", "192.0.2.99:1", "X-API-Key", f.key)), 403, CodeForbidden)
	// Removing the rule reopens.
	p.SetView(f.apply(v, 13, fsm.ViewRecord{Kind: fsm.ChangeIPRule, Tenant: "acme", Key: "t2", Deleted: true}))
	expect(t, p.Decide(req("GET", "/", "192.0.2.99:1", "X-API-Key", f.key)), 200, "")
	blocks := 0
	for _, e := range a.entries {
		if e.Action == fsm.ActionIPBlocked {
			blocks++
		}
	}
	if blocks != 4 {
		t.Fatalf("ip blocks audited: %d, want 4", blocks)
	}
}

func TestPipelineRateLimit(t *testing.T) {
	f := newFixture(t)
	p, a := f.pipeline(nil)
	// Burst 10 at 600/min (10 tokens/s).
	for i := range 10 {
		d := p.Decide(req("GET", "/", "198.51.100.7:1", "X-API-Key", f.key))
		expect(t, d, 200, "")
		if d.Rate.Limit != 600 || d.Rate.Remaining != 9-i {
			t.Fatalf("request %d: rate %+v", i, d.Rate)
		}
	}
	d := p.Decide(req("GET", "/", "198.51.100.7:1", "X-API-Key", f.key))
	expect(t, d, 429, CodeRateLimited)
	if d.Rate.RetryAfter != 1 {
		t.Fatalf("retry after %d, want 1 (rounded up)", d.Rate.RetryAfter)
	}
	f.clock.Advance(100 * time.Millisecond)
	expect(t, p.Decide(req("GET", "/", "198.51.100.7:1", "X-API-Key", f.key)), 200, "")
	// Route costs: /export/* is class export, cost 5.
	routes, err := ParseRouteMap("GET /export/*=read:export")
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := f.pipeline(func(c *PipelineConfig) { c.Routes = routes })
	expect(t, p2.Decide(req("GET", "/export/all", "198.51.100.7:1", "X-API-Key", f.key)), 200, "")
	expect(t, p2.Decide(req("GET", "/export/all", "198.51.100.7:1", "X-API-Key", f.key)), 200, "")
	d = p2.Decide(req("GET", "/export/all", "198.51.100.7:1", "X-API-Key", f.key))
	expect(t, d, 429, CodeRateLimited)
	expect(t, p2.Decide(req("GET", "/cheap", "198.51.100.7:1", "X-API-Key", f.key)), 429, CodeRateLimited)
	f.clock.Advance(500 * time.Millisecond) // 5 tokens
	expect(t, p2.Decide(req("GET", "/export/all", "198.51.100.7:1", "X-API-Key", f.key)), 200, "")
	limited := 0
	for _, e := range a.entries {
		if e.Action == fsm.ActionRateLimitExceeded {
			limited++
		}
	}
	if limited != 1 {
		t.Fatalf("rate-limit hits audited: %d", limited)
	}
}

// One recording per rate-limited request feeds both of its readers: fleet
// limiting's demand (every request, admitted or not) and the usage reports
// (requested and admitted cost).
func TestPipelineCountsEachRequestOnceForFleetAndUsage(t *testing.T) {
	f := newFixture(t)
	counts := tally.New()
	p, _ := f.pipeline(func(c *PipelineConfig) { c.Counts = counts })
	demand := NewDemandMeter(counts, f.clock, 5*time.Second)
	usage := counts.NewReader()
	for range 12 { // burst 10: ten admitted, two denied
		p.Decide(req("GET", "/", "198.51.100.7:1", "X-API-Key", f.key))
	}
	p.Decide(req("GET", "/", "198.51.100.7:1", "X-API-Key", "as_bogus")) // unauthenticated: not metered
	f.clock.Advance(time.Second)
	if r := demand.Tick(); len(r) != 1 || !near(r["acme"], 12, 1e-9) {
		t.Fatalf("fleet demand %v, want acme at 12 tokens/s", r)
	}
	if u := usage.Take(); len(u) != 1 || u["acme"] != (tally.Counts{Demand: 12, Admitted: 10}) {
		t.Fatalf("usage %+v, want acme demand 12 admitted 10", u)
	}
}

func TestPipelineDevModeAndAvailability(t *testing.T) {
	f := newFixture(t)
	p, _ := f.pipeline(func(c *PipelineConfig) { c.DevMode = true })
	d := p.Decide(req("DELETE", "/anything", "127.0.0.1:1"))
	expect(t, d, 200, "")
	if d.Identity != DevIdentity || d.Rate.Limit != 0 {
		t.Fatalf("dev identity %+v rate %+v", d.Identity, d.Rate)
	}
	// Presented credentials must still be valid.
	expect(t, p.Decide(req("GET", "/", "127.0.0.1:1", "X-API-Key", "ask_bad")), 401, CodeUnauthenticated)
	// Rate limiting is bypassed in dev mode.
	for range 50 {
		expect(t, p.Decide(req("GET", "/", "127.0.0.1:1", "X-API-Key", f.key)), 200, "")
	}

	// No view yet: 503.
	empty := NewPipeline(PipelineConfig{Clock: f.clock})
	expect(t, empty.Decide(req("GET", "/", "127.0.0.1:1", "X-API-Key", f.key)), 503, CodeUnavailable)

	// Max staleness.
	stale := time.Duration(0)
	ps, _ := f.pipeline(func(c *PipelineConfig) {
		c.MaxStaleness = time.Minute
		c.Staleness = func() time.Duration { return stale }
	})
	expect(t, ps.Decide(req("GET", "/", "127.0.0.1:1", "X-API-Key", f.key)), 200, "")
	stale = time.Minute + time.Second
	expect(t, ps.Decide(req("GET", "/", "127.0.0.1:1", "X-API-Key", f.key)), 503, CodeUnavailable)
}

func TestRouteMap(t *testing.T) {
	m, err := ParseRouteMap("GET /admin/*=admin; /admin/public=read; * /billing/*=manage_tenants:billing\nPOST /export/*=read:export; POST /orders/*/refund=admin")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, path string
		perm         auth.Permission
		class        string
	}{
		{"GET", "/admin/users", auth.PermAdmin, ""},
		{"GET", "/admin/public", auth.PermRead, ""},
		{"DELETE", "/billing/x", auth.PermManageTenants, "billing"},
		{"POST", "/export/now", auth.PermRead, "export"},
		{"POST", "/orders", auth.PermWrite, ""},
		{"HEAD", "/orders", auth.PermRead, ""},
		{"PUT", "/admin/users", auth.PermWrite, ""},
		{"POST", "/orders/7/refund", auth.PermAdmin, ""},
		{"POST", "/orders/7/refund/x", auth.PermWrite, ""},
		{"POST", "/orders/7", auth.PermWrite, ""},
	} {
		p, cl := m.Match(c.method, c.path)
		if p != c.perm || cl != c.class {
			t.Errorf("%s %s: got %s %q, want %s %q", c.method, c.path, p, cl, c.perm, c.class)
		}
	}
	for _, bad := range []string{"GET admin=read", "/x=superuser", "GET /x", "G@T /x=read"} {
		if _, err := ParseRouteMap(bad); err == nil {
			t.Errorf("ParseRouteMap(%q) accepted", bad)
		}
	}
}
