package test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/server"
	"github.com/allsource/guard/kms"
)

// The identity and access suite (DESIGN.md §4, §7), end to end over HTTP
// against an in-process 3-server cluster whose servers share one KMS root key.

// idEnv is a running 3-server cluster with the identity fixtures.
type idEnv struct {
	t     testing.TB
	c     *inprocCluster
	nodes []*inprocNode
	op    string
	hc    *http.Client
	rid   atomic.Uint64
}

// idCluster starts n servers sharing a KMS root key and waits until every one
// holds the pepper and the active signing key.
func idCluster(t testing.TB, n int, tweak func(*inprocNode)) *idEnv {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root.key")
	if _, err := kms.InitLocalRootKey(root); err != nil {
		t.Fatal(err)
	}
	e := &idEnv{t: t, c: newInprocCluster(t), hc: &http.Client{Timeout: scaled(30 * time.Second),
		Transport:     &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 32},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	for i := range n {
		var nd *inprocNode
		if i == 0 {
			nd = e.c.add("n1")
		} else {
			nd = e.c.add(fmt.Sprintf("n%d", i+1), e.nodes[0].addr())
		}
		nd.cfg.KMSLocalKeyFile = root
		nd.cfg.Identity.KeyUseFlush = 100 * time.Millisecond
		// The attacks below would trip the anomaly responses (require MFA,
		// block): the threat suite tests those; here they would only interfere.
		nd.cfg.Threat.Disabled = true
		if tweak != nil {
			tweak(nd)
		}
		e.c.start(nd)
		if i == 0 {
			e.op = operatorToken(t, nd)
		}
		e.nodes = append(e.nodes, nd)
	}
	e.c.leader(t)
	waitFor(t, 30*time.Second, "every server to hold the pepper and the signing key", func() bool {
		for _, nd := range e.nodes {
			ks, active := nd.srv.Secrets().SigningKeys()
			if nd.srv.Secrets().Pepper() == nil || ks == nil || active == nil {
				return false
			}
		}
		return true
	})
	if n > 1 {
		waitFor(t, 30*time.Second, "every server to be a voter", func() bool {
			ms, err := newAPIClient(5*time.Second).members(e.nodes[0].addr(), e.op)
			v, total := voters(ms)
			return err == nil && v == n && total == n
		})
	}
	return e
}

// cred is a credential as presented: Bearer, or X-API-Key.
type cred struct {
	name   string
	bearer string
	apiKey string
}

func bearerCred(name, tok string) cred { return cred{name: name, bearer: tok} }

type reply struct {
	status int
	body   []byte
	rid    string
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.status, bytes.TrimSpace(r.body)) }

// call sends a request to node (index into nodes) with a fresh request id.
// A server that answers 503 not_leader (no leader for the moment: an
// election is under way, which a loaded 2-core machine can cause) is asked
// again, as the error tells clients to, for up to 15 s; no request of the
// suite expects that answer.
func (e *idEnv) call(node int, method, path string, c cred, body any) reply {
	e.t.Helper()
	deadline := time.Now().Add(scaled(15 * time.Second))
	for {
		r := e.callOnce(node, method, path, c, body)
		if r.status != http.StatusServiceUnavailable || !bytes.Contains(r.body, []byte(`"not_leader"`)) || time.Now().After(deadline) {
			return r
		}
		time.Sleep(50 * time.Millisecond) // client backoff before asking again
	}
}

func (e *idEnv) callOnce(node int, method, path string, c cred, body any) reply {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+e.nodes[node%len(e.nodes)].addr()+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	rid := fmt.Sprintf("idt-%d-%d", time.Now().UnixNano()%1e9, e.rid.Add(1))
	req.Header.Set("X-Request-ID", rid)
	if c.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+c.bearer)
	}
	if c.apiKey != "" {
		req.Header.Set("X-API-Key", c.apiKey)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, body: b, rid: rid}
}

// must sends a request that must answer want, and decodes the body into out.
func (e *idEnv) must(want int, node int, method, path string, c cred, body, out any) reply {
	e.t.Helper()
	r := e.call(node, method, path, c, body)
	if r.status != want {
		e.t.Fatalf("%s %s as %s: got %s, want %d", method, path, c.name, r, want)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			e.t.Fatalf("%s %s: decoding %s: %v", method, path, r.body, err)
		}
	}
	return r
}

func (e *idEnv) opCred() cred { return bearerCred("operator", e.op) }

func (e *idEnv) leader() *inprocNode { return e.c.leader(e.t) }

func (e *idEnv) login(tenant, user, pw string) api.TokenResponse {
	e.t.Helper()
	var tr api.TokenResponse
	e.must(200, int(e.rid.Load()), "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": tenant, "username": user, "password": pw}, &tr)
	return tr
}

func (e *idEnv) createUser(tenant, name, role string) string {
	e.t.Helper()
	var u api.UserView
	e.must(201, 0, "POST", "/v1/tenants/"+tenant+"/users", e.opCred(),
		map[string]string{"username": name, "password": "pw-" + name + "-correct-horse", "email": name + "@" + tenant + ".test", "role": role}, &u)
	return u.ID
}

func (e *idEnv) createKey(tenant string, c cred, name, role, expires string) api.APIKeyView {
	e.t.Helper()
	var k api.APIKeyView
	e.must(201, 1, "POST", "/v1/tenants/"+tenant+"/api-keys", c, map[string]string{"name": name, "role": role, "expires_in": expires}, &k)
	return k
}

// auditOf returns the entries of tenant's chain on node's state with the request id.
func auditOf(nd *inprocNode, tenant, rid string) []*fsm.AuditEntry {
	var out []*fsm.AuditEntry
	_ = nd.srv.FSM().View(func(r *fsm.Reader) error {
		var after uint64
		for {
			es, next := r.Audit(fsm.AuditQuery{Tenant: tenant, After: after, Limit: 1000})
			for _, e := range es {
				if e.RequestID == rid {
					out = append(out, e)
				}
			}
			if next == 0 {
				return nil
			}
			after = next
		}
	})
	return out
}

// expectAudit waits until the leader's state holds an entry with action for
// each request id, in the given tenant's chain.
func (e *idEnv) expectAudit(want map[string]fsm.Action, tenantOf map[string]string) {
	e.t.Helper()
	missing := map[string]bool{}
	for rid := range want {
		missing[rid] = true
	}
	waitFor(e.t, 30*time.Second, "audit entries of the refused requests", func() bool {
		l := e.leader()
		for rid := range missing {
			for _, en := range auditOf(l, tenantOf[rid], rid) {
				if en.Action == want[rid] {
					delete(missing, rid)
					break
				}
			}
		}
		return len(missing) == 0
	})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// forged tokens: alg none, HS256 keyed with the Ed25519 public key.
func forgeNone(valid string) string {
	parts := strings.Split(valid, ".")
	return b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
}

func forgeHS256WithPublicKey(valid string, kid string, pub []byte) string {
	parts := strings.Split(valid, ".")
	signed := b64([]byte(`{"alg":"HS256","kid":"`+kid+`","typ":"JWT"}`)) + "." + parts[1]
	m := hmac.New(sha256.New, pub)
	m.Write([]byte(signed))
	return signed + "." + b64(m.Sum(nil))
}

func flipSignature(tok string) string {
	i := strings.LastIndexByte(tok, '.') + 10
	b := []byte(tok)
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// mint signs claims with the cluster's active key (as a stolen-claims or
// misconfigured issuer would).
func (e *idEnv) mint(c auth.Claims) string {
	e.t.Helper()
	_, key := e.nodes[0].srv.Secrets().SigningKeys()
	tok, err := auth.Mint(c, key)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func claimsOf(t *testing.T, tok string) auth.Claims {
	t.Helper()
	parts := strings.Split(tok, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return auth.Claims{Subject: m["sub"].(string), TenantID: m["tenant_id"].(string), Role: auth.Role(m["role"].(string)),
		Issuer: "allsource-guard", Audience: []string{"allsource-guard"}, IssuedAt: time.Unix(int64(m["iat"].(float64)), 0),
		ExpiresAt: time.Unix(int64(m["exp"].(float64)), 0), ID: m["jti"].(string), Use: auth.TokenAccess}
}

// endpoint is one route of the matrix, with a body that would be accepted.
type endpoint struct {
	method, path string
	body         any
	tenantScoped bool // under /v1/tenants/acme: another tenant's credential gets 404
}

func identityEndpoints(userID, keyID, ruleID string) []endpoint {
	return []endpoint{
		{"GET", "/v1/tenants", nil, false},
		{"POST", "/v1/tenants", map[string]string{"id": "newco"}, false},
		{"GET", "/v1/tenants/acme", nil, true},
		{"PATCH", "/v1/tenants/acme", map[string]string{"name": "Acme 2"}, true},
		{"GET", "/v1/tenants/acme/users", nil, true},
		{"POST", "/v1/tenants/acme/users", map[string]string{"username": "mallory", "password": "a long enough password", "role": "readonly"}, true},
		{"GET", "/v1/tenants/acme/users/" + userID, nil, true},
		{"PATCH", "/v1/tenants/acme/users/" + userID, map[string]any{"disabled": true}, true},
		{"DELETE", "/v1/tenants/acme/users/" + userID, nil, true},
		{"POST", "/v1/tenants/acme/users/" + userID + "/password", map[string]string{"new_password": "another long password"}, true},
		{"GET", "/v1/tenants/acme/api-keys", nil, true},
		{"POST", "/v1/tenants/acme/api-keys", map[string]string{"name": "x", "role": "readonly"}, true},
		{"DELETE", "/v1/tenants/acme/api-keys/" + keyID, nil, true},
		{"GET", "/v1/tenants/acme/ip-rules", nil, true},
		{"POST", "/v1/tenants/acme/ip-rules", map[string]string{"cidr": "192.0.2.0/24", "action": "block"}, true},
		{"DELETE", "/v1/tenants/acme/ip-rules/" + ruleID, nil, true},
		{"GET", "/v1/tenants/acme/rate-limit", nil, true},
		{"PUT", "/v1/tenants/acme/rate-limit", map[string]string{"tier": "free"}, true},
		{"GET", "/v1/tenants/acme/audit", nil, true},
		{"GET", "/v1/tenants/acme/users?consistency=stale", nil, true},
		{"GET", "/v1/audit/verify", nil, false},
		{"GET", "/v1/audit", nil, false},
		{"GET", "/v1/ip-rules", nil, false},
		{"POST", "/v1/ip-rules", map[string]string{"cidr": "192.0.2.0/24", "action": "block"}, false},
		{"GET", "/v1/signing-keys", nil, false},
		{"POST", "/v1/signing-keys/rotate", nil, false},
		{"GET", "/v1/cluster/members", nil, false},
		{"GET", "/v1/auth/me", nil, false},
		{"POST", "/v1/auth/logout", nil, false},
		{"GET", "/v1/kms/keys", nil, false},
		{"POST", "/v1/kms/keys", map[string]string{"name": "k"}, false},
		{"POST", "/v1/kms/keys/k/rotate", nil, false},
		{"POST", "/v1/kms/encrypt", map[string]any{"key": "k", "plaintext": "eA==", "context": map[string]string{"field": "f"}}, false},
		{"POST", "/v1/kms/decrypt", map[string]any{"ciphertext": "asg:v1:AAAA"}, false},
	}
}

func TestIdentityAndAccess(t *testing.T) {
	e := idCluster(t, 3, nil)
	op := e.opCred()
	for _, ten := range []string{"acme", "globex"} {
		e.must(201, 0, "POST", "/v1/tenants", op, map[string]string{"id": ten, "name": ten, "tier": "professional"}, nil)
	}
	annID := e.createUser("acme", "ann", "admin")
	devID := e.createUser("acme", "dev", "developer")
	e.createUser("acme", "ro", "readonly")
	e.createUser("globex", "gail", "admin")
	for _, u := range []string{"out", "dis", "low"} {
		e.createUser("acme", u, "developer")
	}
	ann := bearerCred("ann", e.login("acme", "ann", "pw-ann-correct-horse").AccessToken)
	dev := bearerCred("dev", e.login("acme", "dev", "pw-dev-correct-horse").AccessToken)
	ro := bearerCred("ro", e.login("acme", "ro", "pw-ro-correct-horse").AccessToken)
	gail := bearerCred("gail", e.login("globex", "gail", "pw-gail-correct-horse").AccessToken)

	annKey := e.createKey("acme", ann, "ann-admin", "admin", "")
	roKey := e.createKey("acme", ann, "ro-key", "readonly", "720h")
	gailKey := e.createKey("globex", gail, "gail-admin", "admin", "")
	var rule fsm.IPRule
	e.must(201, 2, "POST", "/v1/tenants/acme/ip-rules", ann, map[string]string{"cidr": "203.0.113.0/24", "action": "block", "note": "fixture"}, &rule)

	t.Run("valid credentials work on every server", func(t *testing.T) {
		for i := range e.nodes {
			var me api.Me
			e.must(200, i, "GET", "/v1/auth/me", ann, nil, &me)
			if me.Kind != fsm.PrincipalUser || me.Tenant != "acme" || me.Role != auth.RoleAdmin || me.TokenID == "" {
				t.Fatalf("me on node %d = %+v", i, me)
			}
			e.must(200, i, "GET", "/v1/tenants/acme/users?consistency=stale", cred{name: "key", apiKey: annKey.Key}, nil, nil)
			e.must(200, i, "GET", "/v1/tenants/acme/users?consistency=stale", bearerCred("key", annKey.Key), nil, nil)
		}
	})

	// The refused credentials.
	claims := claimsOf(t, ann.bearer)
	_, active := e.nodes[0].srv.Secrets().SigningKeys()
	pub := active.Ed25519PrivateKey().Public().(ed25519.PublicKey)
	expired := claims
	expired.IssuedAt, expired.ExpiresAt = claims.IssuedAt.Add(-3*time.Hour), claims.IssuedAt.Add(-2*time.Hour)
	wrongAud, wrongIss := claims, claims
	wrongAud.Audience = []string{"another-service"}
	wrongIss.Issuer = "https://evil.example"

	outTok := e.login("acme", "out", "pw-out-correct-horse").AccessToken
	e.must(204, 1, "POST", "/v1/auth/logout", bearerCred("out", outTok), nil, nil)
	disTok := e.login("acme", "dis", "pw-dis-correct-horse").AccessToken
	lowTok := e.login("acme", "low", "pw-low-correct-horse").AccessToken
	var users struct {
		Users []api.UserView `json:"users"`
	}
	e.must(200, 0, "GET", "/v1/tenants/acme/users", op, nil, &users)
	ids := map[string]string{}
	for _, u := range users.Users {
		ids[u.Username] = u.ID
	}
	e.must(200, 2, "PATCH", "/v1/tenants/acme/users/"+ids["dis"], ann, map[string]any{"disabled": true}, nil)
	e.must(200, 1, "PATCH", "/v1/tenants/acme/users/"+ids["low"], ann, map[string]any{"role": "readonly"}, nil)
	revoked := e.createKey("acme", ann, "revoked", "readonly", "")
	e.must(200, 0, "DELETE", "/v1/tenants/acme/api-keys/"+revoked.ID, ann, nil, nil)
	short := e.createKey("acme", ann, "short", "readonly", "1s")
	waitFor(t, 10*time.Second, "the short-lived key to expire", func() bool { return time.Now().After(short.ExpiresAt.Add(50 * time.Millisecond)) })
	badChecksum := []byte(roKey.Key)
	badChecksum[len(badChecksum)-10] ^= 1

	bad := []cred{
		{name: "no credential"},
		bearerCred("expired token", e.mint(expired)),
		bearerCred("wrong signature", flipSignature(ann.bearer)),
		bearerCred("alg none", forgeNone(ann.bearer)),
		bearerCred("HS256 keyed with the public key", forgeHS256WithPublicKey(ann.bearer, active.KID, pub)),
		bearerCred("wrong audience", e.mint(wrongAud)),
		bearerCred("wrong issuer", e.mint(wrongIss)),
		bearerCred("revoked jti", outTok),
		bearerCred("disabled user", disTok),
		bearerCred("lowered role", lowTok),
		{name: "revoked API key", apiKey: revoked.Key},
		bearerCred("expired API key", short.Key),
		{name: "malformed API key (checksum)", apiKey: string(badChecksum)},
		bearerCred("malformed API key (shape)", "ask_notakey"),
		bearerCred("refresh token as bearer", e.login("acme", "ann", "pw-ann-correct-horse").RefreshToken),
		bearerCred("unknown operator token", "aso_thisisnotthetokenofthisclusteratallnoway0123456"),
	}

	t.Run("every endpoint refuses bad credentials with 401 and an audit entry", func(t *testing.T) {
		want := map[string]fsm.Action{}
		where := map[string]string{}
		eps := identityEndpoints(annID, roKey.ID, rule.ID)
		i := 0
		for _, ep := range eps {
			for _, c := range bad {
				r := e.call(i, ep.method, ep.path, c, ep.body)
				i++
				if r.status != http.StatusUnauthorized {
					t.Errorf("%s %s with %s: got %s, want 401", ep.method, ep.path, c.name, r)
					continue
				}
				var eb struct {
					Error struct{ Code, Message string } `json:"error"`
				}
				if json.Unmarshal(r.body, &eb) != nil || eb.Error.Code != "unauthenticated" {
					t.Errorf("%s %s with %s: body %s, want the unauthenticated error shape", ep.method, ep.path, c.name, r.body)
				}
				if c.bearer != "" && strings.Contains(string(r.body), c.bearer) || c.apiKey != "" && strings.Contains(string(r.body), c.apiKey) {
					t.Errorf("%s %s with %s: the credential is echoed", ep.method, ep.path, c.name)
				}
				want[r.rid] = fsm.ActionAuthFailed
				switch c.name { // refusals that identify the tenant are audited in it
				case "revoked jti", "disabled user", "lowered role", "revoked API key", "expired API key":
					where[r.rid] = "acme"
				default:
					where[r.rid] = ""
				}
			}
		}
		e.expectAudit(want, where)
	})

	t.Run("cross-tenant: another tenant's admin gets 404, learns nothing, and is audited in its own chain", func(t *testing.T) {
		want := map[string]fsm.Action{}
		where := map[string]string{}
		secrets := []string{annID, "ann@acme.test", roKey.ID, rule.ID, "203.0.113.0", `"ann"`, annKey.ID}
		for i, ep := range identityEndpoints(annID, roKey.ID, rule.ID) {
			if !ep.tenantScoped {
				continue
			}
			for _, c := range []cred{gail, {name: "gail's key", apiKey: gailKey.Key}} {
				r := e.call(i, ep.method, ep.path, c, ep.body)
				if r.status != http.StatusNotFound {
					t.Errorf("%s %s as %s: got %s, want 404", ep.method, ep.path, c.name, r)
					continue
				}
				for _, s := range secrets {
					if strings.Contains(string(r.body), s) {
						t.Errorf("%s %s as %s: body leaks %q: %s", ep.method, ep.path, c.name, s, r.body)
					}
				}
				want[r.rid], where[r.rid] = fsm.ActionCrossTenantAttempt, "globex"
			}
		}
		e.expectAudit(want, where)
		// And nothing changed in acme.
		var u api.UserView
		e.must(200, 0, "GET", "/v1/tenants/acme/users/"+annID, op, nil, &u)
		if u.Disabled || u.Username != "ann" {
			t.Fatalf("ann after the cross-tenant attempts: %+v", u)
		}
	})

	t.Run("privilege escalation is refused and audited", func(t *testing.T) {
		roKeyCred := cred{name: "readonly key", apiKey: roKey.Key}
		cases := []struct {
			who          cred
			method, path string
			body         any
			want         int
		}{
			{dev, "POST", "/v1/tenants/acme/api-keys", map[string]string{"name": "up", "role": "admin"}, 403},
			{dev, "POST", "/v1/tenants/acme/users", map[string]string{"username": "x1", "password": "a long enough password", "role": "readonly"}, 403},
			{dev, "PATCH", "/v1/tenants/acme/users/" + devID, map[string]string{"role": "admin"}, 403},
			{ann, "POST", "/v1/tenants", map[string]string{"id": "annco"}, 403},
			{ann, "DELETE", "/v1/tenants/globex", nil, 404},
			{ann, "POST", "/v1/ip-rules", map[string]string{"cidr": "192.0.2.0/24", "action": "allow"}, 403},
			{ann, "PATCH", "/v1/tenants/acme", map[string]string{"tier": "unlimited"}, 403},
			{ann, "PUT", "/v1/tenants/acme/rate-limit", map[string]any{"requests_per_minute": 1000000}, 403},
			{ann, "POST", "/v1/signing-keys/rotate", nil, 403},
			{ann, "GET", "/v1/audit", nil, 403},
			{ann, "POST", "/v1/tenants/acme/suspend", nil, 403},
			{ro, "POST", "/v1/tenants/acme/api-keys", map[string]string{"name": "w", "role": "readonly"}, 403},
			{ro, "POST", "/v1/tenants/acme/ip-rules", map[string]string{"cidr": "192.0.2.0/24", "action": "allow"}, 403},
			{ro, "DELETE", "/v1/tenants/acme/users/" + devID, nil, 403},
			{roKeyCred, "POST", "/v1/tenants/acme/api-keys", map[string]string{"name": "w", "role": "readonly"}, 403},
			{roKeyCred, "PATCH", "/v1/tenants/acme/users/" + devID, map[string]string{"role": "admin"}, 403},
			{cred{name: "admin key", apiKey: annKey.Key}, "POST", "/v1/tenants", map[string]string{"id": "keyco"}, 403},
		}
		want := map[string]fsm.Action{}
		where := map[string]string{}
		for i, c := range cases {
			r := e.call(i, c.method, c.path, c.who, c.body)
			if r.status != c.want {
				t.Errorf("%s %s as %s: got %s, want %d", c.method, c.path, c.who.name, r, c.want)
				continue
			}
			want[r.rid], where[r.rid] = fsm.ActionPermissionDenied, "acme"
			if c.want == 404 {
				want[r.rid] = fsm.ActionCrossTenantAttempt
			}
		}
		e.expectAudit(want, where)
		var ts struct {
			Tenants []fsm.Tenant `json:"tenants"`
		}
		e.must(200, 0, "GET", "/v1/tenants", op, nil, &ts)
		if len(ts.Tenants) != 2 {
			t.Fatalf("tenants after the escalation attempts: %+v", ts.Tenants)
		}
	})

	t.Run("refresh rotates, a replayed refresh token revokes the family", func(t *testing.T) {
		tr := e.login("acme", "dev", "pw-dev-correct-horse")
		var tr2 api.TokenResponse
		e.must(200, 2, "POST", "/v1/auth/refresh", cred{}, map[string]string{"refresh_token": tr.RefreshToken}, &tr2)
		e.must(200, 0, "GET", "/v1/auth/me", bearerCred("refreshed", tr2.AccessToken), nil, nil)
		r := e.call(1, "POST", "/v1/auth/refresh", cred{}, map[string]string{"refresh_token": tr.RefreshToken})
		if r.status != 401 {
			t.Fatalf("replayed refresh token: %s, want 401", r)
		}
		for _, tok := range []string{tr.AccessToken, tr2.AccessToken} {
			waitFor(t, 10*time.Second, "the family's access tokens to be refused everywhere", func() bool {
				for i := range e.nodes {
					if e.call(i, "GET", "/v1/auth/me", bearerCred("family", tok), nil).status != 401 {
						return false
					}
				}
				return true
			})
		}
		if r := e.call(0, "POST", "/v1/auth/refresh", cred{}, map[string]string{"refresh_token": tr2.RefreshToken}); r.status != 401 {
			t.Fatalf("refresh with the newest token of a revoked family: %s, want 401", r)
		}
		var reuse int
		_ = e.leader().srv.FSM().View(func(rd *fsm.Reader) error {
			es, _ := rd.Audit(fsm.AuditQuery{Tenant: "acme", Action: fsm.ActionTokenReuse, Limit: 100})
			reuse = len(es)
			return nil
		})
		if reuse != 1 {
			t.Fatalf("token_reuse_detected entries = %d, want 1", reuse)
		}
	})

	t.Run("lockout after 5 failures, agreed by every server", func(t *testing.T) {
		for i := range 5 {
			r := e.call(i, "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": "acme", "username": "ro", "password": "wrong-" + fmt.Sprint(i)})
			if r.status != 401 {
				t.Fatalf("failure %d: %s", i, r)
			}
		}
		waitFor(t, 10*time.Second, "the lock on every server", func() bool {
			for _, nd := range e.nodes {
				var u *fsm.User
				_ = nd.srv.FSM().View(func(rd *fsm.Reader) error { u, _ = rd.UserByName("acme", "ro"); return nil })
				if u == nil || !u.Locked(time.Now()) {
					return false
				}
			}
			return true
		})
		r := e.call(0, "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": "acme", "username": "ro", "password": "pw-ro-correct-horse"})
		if r.status != 401 || !strings.Contains(string(r.body), "invalid credentials") {
			t.Fatalf("correct password while locked: %s, want the same 401 as a wrong password", r)
		}
		e.must(200, 1, "PATCH", "/v1/tenants/acme/users/ro", ann, map[string]any{"unlock": true}, nil)
		e.login("acme", "ro", "pw-ro-correct-horse")
	})

	t.Run("suspension stops every credential of the tenant at once", func(t *testing.T) {
		gailTok := e.login("globex", "gail", "pw-gail-correct-horse").AccessToken
		e.must(200, 0, "POST", "/v1/tenants/globex/suspend", op, nil, nil)
		for i := range e.nodes {
			for _, c := range []cred{bearerCred("gail", gailTok), {name: "gail key", apiKey: gailKey.Key}} {
				waitFor(t, 10*time.Second, "suspension on node "+fmt.Sprint(i), func() bool {
					return e.call(i, "GET", "/v1/tenants/globex/users?consistency=stale", c, nil).status == 403
				})
			}
		}
		if r := e.call(0, "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": "globex", "username": "gail", "password": "pw-gail-correct-horse"}); r.status != 401 {
			t.Fatalf("login into a suspended tenant: %s", r)
		}
		e.must(200, 0, "POST", "/v1/tenants/globex/activate", op, nil, nil)
		e.must(200, 2, "GET", "/v1/tenants/globex/users", bearerCred("gail", gailTok), nil, nil)
	})

	t.Run("API key use is reported in batches", func(t *testing.T) {
		for i := range 9 {
			e.must(200, i, "GET", "/v1/tenants/acme/users?consistency=stale", cred{name: "ann key", apiKey: annKey.Key}, nil, nil)
		}
		waitFor(t, 20*time.Second, "last_used and the use count", func() bool {
			var ks struct {
				Keys []api.APIKeyView `json:"api_keys"`
			}
			e.must(200, 0, "GET", "/v1/tenants/acme/api-keys", ann, nil, &ks)
			for _, k := range ks.Keys {
				if k.ID == annKey.ID {
					return k.Uses >= 9+2 && !k.LastUsed.IsZero()
				}
			}
			return false
		})
	})

	t.Run("signing-key rotation: old tokens verify until the old key is retired", func(t *testing.T) {
		old := e.login("acme", "ann", "pw-ann-correct-horse").AccessToken
		var nk api.SigningKeyView
		e.must(201, 1, "POST", "/v1/signing-keys/rotate", op, nil, &nk)
		waitFor(t, 10*time.Second, "the new key on every server", func() bool {
			for _, nd := range e.nodes {
				if _, a := nd.srv.Secrets().SigningKeys(); a == nil || a.KID != nk.KID {
					return false
				}
			}
			return true
		})
		fresh := e.login("acme", "ann", "pw-ann-correct-horse").AccessToken
		if h, _ := auth.ParseUnverifiedHeader(fresh); h.KID != nk.KID {
			t.Fatalf("new token kid %q, want %q", h.KID, nk.KID)
		}
		for i := range e.nodes {
			e.must(200, i, "GET", "/v1/auth/me", bearerCred("old", old), nil, nil)
		}
		var jwks struct {
			Keys []map[string]string `json:"keys"`
		}
		e.must(200, 2, "GET", "/.well-known/jwks.json", cred{}, nil, &jwks)
		if len(jwks.Keys) < 2 {
			t.Fatalf("jwks after rotation: %+v", jwks)
		}
		oldKID, _ := auth.ParseUnverifiedHeader(old)
		e.must(200, 0, "POST", "/v1/signing-keys/"+oldKID.KID+"/retire", op, nil, nil)
		waitFor(t, 10*time.Second, "the retired key refused everywhere", func() bool {
			for i := range e.nodes {
				if e.call(i, "GET", "/v1/auth/me", bearerCred("old", old), nil).status != 401 {
					return false
				}
			}
			return true
		})
		e.must(200, 0, "GET", "/v1/auth/me", bearerCred("fresh", fresh), nil, nil)
	})

	t.Run("secrets are stored wrapped: no e-mail, pepper or private key in the clear", func(t *testing.T) {
		var pep []byte
		pep, _ = e.nodes[0].srv.Secrets().APIKeyPepper()
		for _, nd := range e.nodes {
			var files []string
			_ = filepath.Walk(nd.cfg.DataDir, func(p string, info os.FileInfo, err error) error {
				if err == nil && !info.IsDir() && !strings.HasSuffix(p, "kms-root.key") {
					files = append(files, p)
				}
				return nil
			})
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					continue
				}
				for _, s := range [][]byte{[]byte("ann@acme.test"), pep, []byte("pw-ann-correct-horse")} {
					if bytes.Contains(b, s) {
						t.Errorf("%s holds a secret in the clear (%d bytes)", f, len(s))
					}
				}
			}
		}
	})

	t.Run("audit chains verify on every server", func(t *testing.T) {
		for i := range e.nodes {
			waitFor(t, 10*time.Second, "verify ok", func() bool {
				return e.call(i, "GET", "/v1/audit/verify?consistency=stale", op, nil).status == 200
			})
		}
	})

	t.Run("a modified audit entry is caught on the server that holds it", func(t *testing.T) {
		testAuditTamper(t, e)
	})
}

// testAuditTamper edits one audit entry in a running follower's state file
// and checks that verify (consistency=stale, answered from that server's own
// state) reports the chain broken there, and only there.
//
// How: the FSM keeps its state in a bbolt file that it reads through a shared
// read-only mmap. bbolt pages carry no checksum, so rewriting bytes of a
// stored entry in the file (same length, still valid JSON) changes what the
// running server reads, exactly as corruption or an attacker with write
// access to the disk would. The raft log is untouched: the state file is
// rebuilt from it on restart, which is how a damaged replica heals — and why
// verify must run per server (stale) to catch it.
func testAuditTamper(t *testing.T, e *idEnv) {
	var victim *inprocNode
	for _, nd := range e.nodes {
		if !nd.srv.Node().IsLeader() {
			victim = nd
			break
		}
	}
	marker := "tamper-target-" + fmt.Sprint(time.Now().UnixNano()%1e6)
	e.must(201, 0, "POST", "/v1/tenants/acme/ip-rules", e.opCred(), map[string]string{"cidr": "198.51.100.0/24", "action": "block", "note": marker}, nil)
	waitFor(t, 10*time.Second, "the entry on the victim", func() bool {
		found := false
		_ = victim.srv.FSM().View(func(r *fsm.Reader) error {
			es, _ := r.Audit(fsm.AuditQuery{Tenant: "acme", Action: fsm.ActionIPRuleAdded, Limit: 1000})
			for _, en := range es {
				found = found || en.Metadata["cidr"] == "198.51.100.0/24"
			}
			return nil
		})
		return found
	})
	path := victim.srv.FSM().Path()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	// The audit entry of the rule records its cidr in metadata (a binary
	// record: key and value each after its length): turn the block into a
	// /16 of the same length.
	from, to := []byte("\x04cidr\x0f198.51.100.0/24"), []byte("\x04cidr\x0f198.51.100.0/16")
	n := 0
	for off := bytes.Index(data, from); off >= 0; {
		if _, err := f.WriteAt(to, int64(off)); err != nil {
			t.Fatal(err)
		}
		n++
		next := bytes.Index(data[off+1:], from)
		if next < 0 {
			break
		}
		off += 1 + next
	}
	if n == 0 {
		t.Fatal("the entry was not found in the state file")
	}
	var rep struct {
		OK     bool              `json:"ok"`
		Chains []fsm.ChainReport `json:"chains"`
	}
	idx := 0
	for i, nd := range e.nodes {
		if nd == victim {
			idx = i
		}
	}
	r := e.must(http.StatusConflict, idx, "GET", "/v1/audit/verify?consistency=stale&tenant=acme", e.opCred(), nil, &rep)
	if rep.OK || len(rep.Chains) != 1 || rep.Chains[0].OK || !strings.Contains(rep.Chains[0].Problem, "modified") {
		t.Fatalf("verify on the tampered server: %s", r)
	}
	for i, nd := range e.nodes {
		if nd != victim {
			e.must(http.StatusOK, i, "GET", "/v1/audit/verify?consistency=stale&tenant=acme", e.opCred(), nil, nil)
		}
	}
}

// TestLoginTiming: an unknown user, a wrong password and a disabled user
// cost the same (one Argon2id verification at the default parameters). The
// medians of interleaved runs must agree within a generous ratio; absolute
// times are not asserted.
func TestLoginTiming(t *testing.T) {
	e := idCluster(t, 1, nil)
	e.must(201, 0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme"}, nil)
	e.createUser("acme", "known", "developer")
	e.createUser("acme", "off", "developer")
	e.must(200, 0, "PATCH", "/v1/tenants/acme/users/off", e.opCred(), map[string]any{"disabled": true}, nil)
	// Every login fails (the known user locks after 5: a locked account
	// costs the same dummy verification).
	kinds := []struct{ name, user string }{{"unknown user", "nobody-here"}, {"wrong password", "known"}, {"disabled user", "off"}}
	const runs = 31
	times := make([][]time.Duration, len(kinds))
	for i := range runs {
		for j := range kinds {
			k := (i + j) % len(kinds) // rotate the order: no kind always runs first
			kd := kinds[k]
			// Measure each login with the previous one's failure committed, so
			// the batcher's raft write does not land inside one kind's timing.
			waitFor(t, 10*time.Second, "the audit batcher to settle", func() bool { return e.nodes[0].srv.API().AuditIdle() })
			start := time.Now()
			r := e.call(0, "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": "acme", "username": kd.user, "password": "not the password " + fmt.Sprint(i)})
			d := time.Since(start)
			if r.status != 401 || !strings.Contains(string(r.body), "invalid credentials") {
				t.Fatalf("%s: %s", kd.name, r)
			}
			times[k] = append(times[k], d)
		}
	}
	// Compare within each round (the three logins ran back to back, in
	// rotating order), so that load drifting over the run cancels out.
	for k := range kinds {
		t.Logf("%s: median %v", kinds[k].name, median(times[k]))
	}
	for k := 1; k < len(kinds); k++ {
		ratios := make([]time.Duration, runs)
		for i := range runs {
			ratios[i] = time.Duration(1000 * float64(times[k][i]) / float64(times[0][i]))
		}
		ratio := float64(median(ratios)) / 1000
		t.Logf("%s / %s: median ratio %.2f", kinds[k].name, kinds[0].name, ratio)
		if ratio < 0.6 || ratio > 1.67 {
			t.Errorf("%s vs %s: median ratio %.2f outside [0.6, 1.67]", kinds[k].name, kinds[0].name, ratio)
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// TestHS256Tokens: HS256 by configuration, with a secret of at least 32
// bytes; a shorter one is refused at start.
func TestHS256Tokens(t *testing.T) {
	dir := t.TempDir()
	short, long := filepath.Join(dir, "short"), filepath.Join(dir, "long")
	if err := os.WriteFile(short, []byte("only-31-bytes-of-secret-0123456"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(long, []byte("a-secret-of-forty-bytes-0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := e2eConfigCheck(short)
	if bad == nil || !strings.Contains(bad.Error(), "32 bytes") {
		t.Fatalf("a 31-byte HS256 secret: Validate = %v, want a refusal naming 32 bytes", bad)
	}
	e := idCluster(t, 1, func(n *inprocNode) {
		n.cfg.Identity.TokenAlg, n.cfg.Identity.HS256SecretFile = "HS256", long
	})
	e.must(201, 0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme"}, nil)
	e.createUser("acme", "ann", "admin")
	tok := e.login("acme", "ann", "pw-ann-correct-horse").AccessToken
	if h, err := auth.ParseUnverifiedHeader(tok); err != nil || h.Alg != auth.AlgHS256 {
		t.Fatalf("token header %+v, %v: want HS256", h, err)
	}
	e.must(200, 0, "GET", "/v1/auth/me", bearerCred("ann", tok), nil, nil)
	var jwks struct {
		Keys []any `json:"keys"`
	}
	e.must(200, 0, "GET", "/.well-known/jwks.json", cred{}, nil, &jwks)
	if len(jwks.Keys) != 0 {
		t.Fatalf("JWKS publishes %d keys for an HS256 cluster; HS256 secrets are never published", len(jwks.Keys))
	}
	// A token signed with another secret is refused.
	c := claimsOf(t, tok)
	k, _ := auth.NewHS256SigningKey(mustKID(t, tok), []byte("another-secret-of-forty-bytes-012345678"), time.Now())
	forged, err := auth.Mint(c, k)
	if err != nil {
		t.Fatal(err)
	}
	if r := e.call(0, "GET", "/v1/auth/me", bearerCred("forged", forged), nil); r.status != 401 {
		t.Fatalf("HS256 token with the wrong secret: %s", r)
	}
}

func mustKID(t *testing.T, tok string) string {
	h, err := auth.ParseUnverifiedHeader(tok)
	if err != nil {
		t.Fatal(err)
	}
	return h.KID
}

// e2eConfigCheck validates a server configuration that uses secretFile as
// its HS256 secret.
func e2eConfigCheck(secretFile string) error {
	cfg := newTestServerConfig()
	cfg.Identity.TokenAlg, cfg.Identity.HS256SecretFile = "HS256", secretFile
	return cfg.Validate()
}

func newTestServerConfig() server.Config {
	return server.Config{NodeID: "v1", DataDir: os.TempDir(), HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		Bootstrap: true, JoinToken: testJoinToken, LogFormat: "text", MaxBodyBytes: 1 << 20}
}

// TestPasswordRehashOnLogin: hashes are PHC strings, so raising the Argon2id
// parameters leaves old hashes verifying, and each is upgraded at its user's
// next successful login.
func TestPasswordRehashOnLogin(t *testing.T) {
	e := idCluster(t, 1, nil)
	e.must(201, 0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme"}, nil)
	id := e.createUser("acme", "ann", "admin")
	hashOf := func() string {
		var u *fsm.User
		_ = e.nodes[0].srv.FSM().View(func(r *fsm.Reader) error { u, _ = r.User("acme", id); return nil })
		return u.PasswordHash
	}
	if h := hashOf(); !strings.Contains(h, "m=19456,t=2,p=1") {
		t.Fatalf("hash at the defaults: %s", h)
	}
	n := e.nodes[0]
	e.c.stop(n)
	n.cfg.Identity.ArgonTime = 3
	e.c.start(n)
	e.c.leader(t)
	waitFor(t, 30*time.Second, "the restarted server's key material", func() bool {
		_, a := n.srv.Secrets().SigningKeys()
		return a != nil && n.srv.Secrets().Pepper() != nil && n.srv.Node().CaughtUp()
	})
	e.login("acme", "ann", "pw-ann-correct-horse")
	waitFor(t, 10*time.Second, "the upgraded hash", func() bool { return strings.Contains(hashOf(), "m=19456,t=3,p=1") })
	e.login("acme", "ann", "pw-ann-correct-horse") // and the new hash verifies
}

// TestRootKeyDerivedFromJoinToken: without a root key file, every server of a
// cluster derives the same KMS root key from the join token, so followers
// unwrap the pepper and signing keys the leader made.
func TestRootKeyDerivedFromJoinToken(t *testing.T) {
	e := idCluster(t, 3, func(n *inprocNode) { n.cfg.KMSLocalKeyFile = "" }) // waits for every server's key material
	e.must(201, 0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme"}, nil)
	e.createUser("acme", "ann", "admin")
	tok := e.login("acme", "ann", "pw-ann-correct-horse").AccessToken
	key := e.createKey("acme", bearerCred("ann", tok), "k", "readonly", "")
	for i := range e.nodes {
		waitFor(t, 10*time.Second, fmt.Sprintf("the key to work on server %d", i), func() bool {
			return e.call(i, "GET", "/v1/auth/me", cred{name: "key", apiKey: key.Key}, nil).status == http.StatusOK
		})
	}
}
