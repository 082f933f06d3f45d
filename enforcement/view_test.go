package enforcement

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
)

func TestViewCopyOnWrite(t *testing.T) {
	f := newFixture(t)
	old := f.view
	if _, ok := old.APIKey(f.keyID); !ok {
		t.Fatal("fixture key missing")
	}
	nv := f.apply(old, 11, fsm.ViewRecord{Kind: fsm.ChangeAPIKey, Key: f.keyID, Deleted: true},
		fsm.ViewRecord{Kind: fsm.ChangeTenant, Tenant: "beta", Key: "beta", TenantRec: &fsm.ViewTenant{ID: "beta", Status: fsm.TenantActive}})
	if _, ok := old.APIKey(f.keyID); !ok {
		t.Fatal("a new view changed the old one")
	}
	if _, ok := old.Tenant("beta"); ok {
		t.Fatal("a new view changed the old one")
	}
	if _, ok := nv.APIKey(f.keyID); ok {
		t.Fatal("deleted key still in the new view")
	}
	if _, ok := nv.Tenant("beta"); !ok || nv.Index != 11 {
		t.Fatalf("new view: beta missing or index %d", nv.Index)
	}
	if nv.Counts().APIKeys != old.Counts().APIKeys-1 || !nv.HasPepper() {
		t.Fatalf("counts %+v", nv.Counts())
	}
}

func TestViewTenantDeletionCascades(t *testing.T) {
	f := newFixture(t)
	v := f.apply(f.view, 11, fsm.ViewRecord{Kind: fsm.ChangeIPRule, Tenant: "acme", Key: "r1",
		IPRule: &fsm.ViewIPRule{ID: "r1", Tenant: "acme", CIDR: "192.0.2.0/24", Action: fsm.IPBlock}})
	if v.IPFilter().Len() != 1 {
		t.Fatal("rule not added")
	}
	v = f.apply(v, 12, fsm.ViewRecord{Kind: fsm.ChangeTenant, Tenant: "acme", Key: "acme", Deleted: true})
	if _, ok := v.Tenant("acme"); ok {
		t.Fatal("tenant survived")
	}
	if _, ok := v.APIKey(f.keyID); ok {
		t.Fatal("the deleted tenant's key survived")
	}
	if _, ok := v.User("acme", f.userID); ok {
		t.Fatal("the deleted tenant's user survived")
	}
	if v.IPFilter().Len() != 0 {
		t.Fatal("the deleted tenant's IP rule survived")
	}
	// Re-creating the tenant does not bring its old credentials back.
	v = f.apply(v, 13, fsm.ViewRecord{Kind: fsm.ChangeTenant, Tenant: "acme", Key: "acme", TenantRec: &fsm.ViewTenant{ID: "acme", Status: fsm.TenantActive}})
	p, _ := f.pipeline(nil)
	p.SetView(v)
	expect(t, p.Decide(req("GET", "/", "192.0.2.1:1", "X-API-Key", f.key)), 401, CodeUnauthenticated)
}

func TestViewIPRuleExpiry(t *testing.T) {
	f := newFixture(t)
	v := f.apply(f.view, 11, fsm.ViewRecord{Kind: fsm.ChangeIPRule, Tenant: "", Key: "g1",
		IPRule: &fsm.ViewIPRule{ID: "g1", CIDR: "192.0.2.0/24", Action: fsm.IPBlock, ExpiresAt: f.clock.Now().Add(time.Minute)}})
	a := netip.MustParseAddr("192.0.2.1")
	if v.IPFilter().Check("", a).Allowed {
		t.Fatal("rule not applied")
	}
	if v.Expire(f.clock.Now()) != v {
		t.Fatal("expired early")
	}
	f.clock.Advance(time.Minute)
	nv := v.Expire(f.clock.Now())
	if !nv.IPFilter().Check("", a).Allowed || nv.Index != v.Index || nv.KeySet() != v.KeySet() {
		t.Fatal("expired rule still applies, or the view lost its index or keys")
	}
	// An already-expired rule is never added.
	nv = f.apply(nv, 12, fsm.ViewRecord{Kind: fsm.ChangeIPRule, Key: "g2",
		IPRule: &fsm.ViewIPRule{ID: "g2", CIDR: "192.0.2.0/24", Action: fsm.IPBlock, ExpiresAt: f.clock.Now().Add(-time.Second)}})
	if !nv.IPFilter().Check("", a).Allowed {
		t.Fatal("an expired rule was added")
	}
}

func TestViewSecretsNeedTheJoinToken(t *testing.T) {
	f := newFixture(t)
	sealed, _ := fsm.SealViewSecret("another-join-token-0123456789", fsm.SecretPepper, f.pepperRaw)
	b := NewView().edit(f.joinToken, f.clock.Now())
	err := b.apply(&fsm.ViewRecord{Kind: fsm.ChangeSecret, Key: fsm.SecretPepper, Secret: &fsm.ViewSecret{Name: fsm.SecretPepper, Version: "x", Sealed: sealed}})
	if err == nil || b.build(1).HasPepper() {
		t.Fatal("a pepper sealed under another join token opened")
	}
}

func TestViewStorePersistsAndReplays(t *testing.T) {
	f := newFixture(t)
	dir := t.TempDir()
	st, err := openViewStore(dir, f.joinToken)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.saveSnapshot(f.view); err != nil {
		t.Fatal(err)
	}
	rec, _ := f.view.APIKey(f.keyID)
	revoked := *rec
	revoked.RevokedAt = f.clock.Now()
	change := []fsm.ViewRecord{{Kind: fsm.ChangeAPIKey, Tenant: "acme", Key: f.keyID, APIKey: &revoked}}
	if _, err := st.appendFrame(11, change); err != nil {
		t.Fatal(err)
	}
	st.saveContact(f.clock.Now())
	st.close()
	// A torn write at the end of the log is cut off.
	lf, _ := os.OpenFile(filepath.Join(dir, logFile), os.O_APPEND|os.O_WRONLY, 0)
	fmt.Fprint(lf, `{"index":12,"records":[{"kind":"tenant"`)
	lf.Close()

	st2, _ := openViewStore(dir, f.joinToken)
	v, contact, err := st2.load(f.clock.Now())
	if err != nil || v == nil {
		t.Fatalf("load: %v %v", v, err)
	}
	if v.Index != 11 || !contact.Equal(f.clock.Now()) {
		t.Fatalf("index %d contact %v", v.Index, contact)
	}
	k, _ := v.APIKey(f.keyID)
	if k.RevokedAt.IsZero() {
		t.Fatal("the logged revocation was not replayed")
	}
	if !v.HasPepper() || v.KeySet() == nil || v.Counts().Tenants != 2 {
		t.Fatalf("restored view incomplete: %+v", v.Counts())
	}
	if fi, _ := os.Stat(filepath.Join(dir, logFile)); fi.Size() == 0 {
		t.Fatal("log emptied")
	}
	// The pepper is stored sealed, never in the clear.
	for _, name := range []string{snapFile, logFile} {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		if containsBytes(b, f.pepperRaw) {
			t.Fatalf("%s holds the pepper in the clear", name)
		}
	}
	// Without the join token the edge keeps its view but cannot verify keys.
	st3, _ := openViewStore(dir, "a-different-join-token-xxxxxxx")
	v3, _, _ := st3.load(f.clock.Now())
	if v3 == nil || v3.HasPepper() {
		t.Fatal("the sealed pepper opened with another join token")
	}
}

func containsBytes(b, sub []byte) bool {
	for i := 0; i+len(sub) <= len(b); i++ {
		if string(b[i:i+len(sub)]) == string(sub) {
			return true
		}
	}
	return false
}

func TestViewHS256KeysOpenWithTheJoinToken(t *testing.T) {
	f := newFixture(t)
	secret := []byte("an-hs256-secret-of-at-least-32-bytes!!")
	sk, err := auth.NewHS256SigningKey("h1", secret, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := fsm.SealViewSecret(f.joinToken, "signing/h1", secret)
	v := f.apply(f.view, 11, fsm.ViewRecord{Kind: fsm.ChangeSigningKey, Key: "h1",
		SigningKey: &fsm.ViewSigningKey{KID: "h1", Alg: auth.AlgHS256, Sealed: sealed, State: auth.KeyVerifyOnly}})
	if _, ok := v.KeySet().Lookup("h1"); !ok {
		t.Fatal("HS256 key not in the key set")
	}
	tok, _ := auth.Mint(auth.Claims{Subject: f.userID, TenantID: "acme", Role: auth.RoleDeveloper, Issuer: DefaultIssuer,
		Audience: []string{DefaultAudience}, IssuedAt: f.clock.Now(), ExpiresAt: f.clock.Now().Add(time.Hour), ID: "j", Use: auth.TokenAccess}, sk)
	p, _ := f.pipeline(nil)
	p.SetView(v)
	expect(t, p.Decide(req("GET", "/", "192.0.2.1:1", "Authorization", "Bearer "+tok)), 200, "")
}
