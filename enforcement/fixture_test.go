package enforcement

import (
	"crypto/ed25519"
	"hash/crc32"
	"net/http"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

// fixture is a small enforcement view: tenant acme (active, 600 rpm, burst
// 10) with user ann (developer), an API key (readonly), an Ed25519 signing
// key, and the pepper; tenant frozen (suspended) with its own key.
type fixture struct {
	t         *testing.T
	clock     *ManualClock
	joinToken string
	pepper    *auth.Pepper
	pepperRaw []byte
	signer    *auth.SigningKey
	key       string // raw API key of acme (readonly)
	keyID     string
	frozenKey string
	userID    string
	view      *View
}

const fixtureToken = "join-token-for-tests-0123456789"

func newFixture(t testing.TB) *fixture {
	tt, _ := t.(*testing.T)
	f := &fixture{t: tt, clock: NewManualClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)), joinToken: fixtureToken}
	f.pepperRaw = []byte("0123456789abcdef0123456789abcdef-pepper")
	var err error
	if f.pepper, err = auth.NewPepper(f.pepperRaw); err != nil {
		t.Fatal(err)
	}
	if f.signer, err = auth.GenerateSigningKey(nil, "k1", f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	raw, k, err := auth.NewAPIKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	f.key, f.keyID = raw, k.ID
	rawF, kf, _ := auth.NewAPIKey(nil)
	f.frozenKey = rawF
	f.userID = "0123456789abcdef0123456789abcdef"
	sealed, err := fsm.SealViewSecret(f.joinToken, fsm.SecretPepper, f.pepperRaw)
	if err != nil {
		t.Fatal(err)
	}
	pub := f.signer.Ed25519PrivateKey().Public().(ed25519.PublicKey)
	recs := []fsm.ViewRecord{
		{Kind: fsm.ChangeTenant, Tenant: "acme", Key: "acme", TenantRec: &fsm.ViewTenant{ID: "acme", Status: fsm.TenantActive}},
		{Kind: fsm.ChangeLimit, Tenant: "acme", Key: "acme", Limit: &fsm.ViewLimit{Tenant: "acme", RequestsPerMinute: 600, Burst: 10,
			RouteCosts: map[string]int{"export": 5}}},
		{Kind: fsm.ChangeTenant, Tenant: "frozen", Key: "frozen", TenantRec: &fsm.ViewTenant{ID: "frozen", Status: fsm.TenantSuspended}},
		{Kind: fsm.ChangeUser, Tenant: "acme", Key: f.userID, User: &fsm.ViewUser{ID: f.userID, Tenant: "acme", Role: auth.RoleDeveloper,
			TokensValidAfter: f.clock.Now().Add(-time.Hour)}},
		{Kind: fsm.ChangeAPIKey, Tenant: "acme", Key: k.ID, APIKey: &fsm.ViewAPIKey{ID: k.ID, Tenant: "acme", Name: "ci",
			Role: auth.RoleReadOnly, Hash: f.pepper.HashAPIKey(k)}},
		{Kind: fsm.ChangeAPIKey, Tenant: "frozen", Key: kf.ID, APIKey: &fsm.ViewAPIKey{ID: kf.ID, Tenant: "frozen", Name: "f",
			Role: auth.RoleAdmin, Hash: f.pepper.HashAPIKey(kf)}},
		{Kind: fsm.ChangeSigningKey, Key: "k1", SigningKey: &fsm.ViewSigningKey{KID: "k1", Alg: auth.AlgEdDSA, PublicKey: pub, State: auth.KeyActive}},
		{Kind: fsm.ChangeSecret, Key: fsm.SecretPepper, Secret: &fsm.ViewSecret{Name: fsm.SecretPepper, Version: "v1", Sealed: sealed}},
	}
	f.view = f.apply(NewView(), 10, recs...)
	return f
}

// apply builds a new view from v with recs at index.
func (f *fixture) apply(v *View, index uint64, recs ...fsm.ViewRecord) *View {
	b := v.edit(f.joinToken, f.clock.Now())
	for i := range recs {
		if err := b.apply(&recs[i]); err != nil {
			panic(err)
		}
	}
	return b.build(index)
}

// token mints an access token for user (acme) issued at iat.
func (f *fixture) token(jti, sub string, role auth.Role, iat time.Time) string {
	tok, err := auth.Mint(auth.Claims{Subject: sub, TenantID: "acme", Role: role, Issuer: DefaultIssuer,
		Audience: []string{DefaultAudience}, IssuedAt: iat, ExpiresAt: iat.Add(time.Hour), ID: jti, Use: auth.TokenAccess, Family: "fam1"}, f.signer)
	if err != nil {
		panic(err)
	}
	return tok
}

type recordedAudit struct {
	entries []fsm.AuditInput
	uses    map[string]int
}

func (r *recordedAudit) Record(e fsm.AuditInput) { r.entries = append(r.entries, e) }
func (r *recordedAudit) KeyUsed(id string, _ time.Time) {
	if r.uses == nil {
		r.uses = map[string]int{}
	}
	r.uses[id]++
}

func (f *fixture) pipeline(mut func(*PipelineConfig)) (*Pipeline, *recordedAudit) {
	a := &recordedAudit{}
	cfg := PipelineConfig{Clock: f.clock, Audit: a, Buckets: NewBuckets(BucketsConfig{Clock: f.clock})}
	if mut != nil {
		mut(&cfg)
	}
	p := NewPipeline(cfg)
	p.SetView(f.view)
	return p, a
}

func req(method, path, remote string, kv ...string) *Request {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return &Request{Method: method, Path: path, RemoteAddr: remote, Header: h}
}

// forgeKey builds a well-formed API key (valid checksum) with the given id
// and a random secret: it parses, but its keyed hash does not match.
func forgeKey(id string) string {
	_, k, _ := auth.NewAPIKey(nil)
	body := auth.APIKeyPrefix + id + "_" + k.Secret
	v := crc32.ChecksumIEEE([]byte(body))
	const b62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	var c [6]byte
	for i := 5; i >= 0; i-- {
		c[i] = b62[v%62]
		v /= 62
	}
	return body + string(c[:])
}

func ruleRec(tenant, id, cidr, action string) fsm.ViewRecord {
	return fsm.ViewRecord{Kind: fsm.ChangeIPRule, Tenant: tenant, Key: id,
		IPRule: &fsm.ViewIPRule{ID: id, Tenant: tenant, CIDR: cidr, Action: fsm.IPAction(action)}}
}
