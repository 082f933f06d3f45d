package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	testNow    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	testIssuer = "https://guard.test"
	testAud    = "allsource"
	hsSecret   = []byte("an-hs256-secret-of-at-least-32-bytes!")
)

type jwtFixture struct {
	ed1, ed2, edRetired, hs *SigningKey
	ks                      *KeySet
	opts                    VerifyOptions
}

func newJWTFixture(t testing.TB) *jwtFixture {
	t.Helper()
	f := &jwtFixture{}
	var err error
	mk := func(kid string) *SigningKey {
		k, err := GenerateSigningKey(nil, kid, testNow.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	f.ed1, f.ed2, f.edRetired = mk("ed-1"), mk("ed-2"), mk("ed-old")
	if f.hs, err = NewHS256SigningKey("hs-1", hsSecret, testNow); err != nil {
		t.Fatal(err)
	}
	vk := func(k *SigningKey, s KeyState) *VerificationKey {
		v, err := k.VerificationKey(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	f.ks, err = NewKeySet(vk(f.ed1, KeyActive), vk(f.ed2, KeyVerifyOnly), vk(f.edRetired, KeyRetired), vk(f.hs, KeyActive))
	if err != nil {
		t.Fatal(err)
	}
	f.opts = VerifyOptions{Issuer: testIssuer, Audience: testAud, Now: testNow}
	return f
}

func validClaims() Claims {
	return Claims{
		Subject: "user-1", TenantID: "acme", Role: RoleDeveloper, Issuer: testIssuer,
		Audience: []string{testAud}, IssuedAt: testNow.Add(-time.Minute), ExpiresAt: testNow.Add(time.Hour),
		ID: "jti-1", Use: TokenAccess, Family: "fam-1",
	}
}

func mint(t testing.TB, c Claims, k *SigningKey) string {
	t.Helper()
	s, err := Mint(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func enc(v any) string {
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			panic(err)
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// craft builds a token from any header and payload (a JSON-able value or a
// raw JSON string), signed by sign over "header.payload".
func craft(header, payload any, sign func(string) []byte) string {
	in := enc(header) + "." + enc(payload)
	return in + "." + base64.RawURLEncoding.EncodeToString(sign(in))
}

func hsSign(secret []byte) func(string) []byte {
	return func(in string) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(in))
		return m.Sum(nil)
	}
}

func edSign(k *SigningKey) func(string) []byte {
	return func(in string) []byte { return ed25519.Sign(k.priv, []byte(in)) }
}

// payload returns the wire claims of validClaims with edits applied.
func payload(edit func(m map[string]any)) map[string]any {
	m := map[string]any{
		"sub": "user-1", "tenant_id": "acme", "role": "developer", "iss": testIssuer, "aud": testAud,
		"iat": testNow.Add(-time.Minute).Unix(), "exp": testNow.Add(time.Hour).Unix(), "jti": "jti-1", "typ": "access",
	}
	if edit != nil {
		edit(m)
	}
	return m
}

func TestMintVerifyRoundTrip(t *testing.T) {
	f := newJWTFixture(t)
	for _, k := range []*SigningKey{f.ed1, f.ed2, f.hs} {
		t.Run(string(k.Alg)+"/"+k.KID, func(t *testing.T) {
			c := validClaims()
			c.NotBefore = c.IssuedAt
			tok := mint(t, c, k)
			h, err := ParseUnverifiedHeader(tok)
			if err != nil || h.Alg != k.Alg || h.KID != k.KID || h.Typ != "JWT" {
				t.Fatalf("header %+v %v", h, err)
			}
			got, err := Verify(tok, f.ks, f.opts)
			if err != nil {
				t.Fatal(err)
			}
			c.IssuedAt, c.NotBefore, c.ExpiresAt = c.IssuedAt.UTC(), c.NotBefore.UTC(), c.ExpiresAt.UTC()
			if fmt.Sprint(got) != fmt.Sprint(c) {
				t.Fatalf("claims changed:\n got %+v\nwant %+v", got, c)
			}
		})
	}
}

// Our tokens are standard: the jwt library's own strict parser accepts them,
// and tokens it mints with our claims pass Verify.
func TestJWTInterop(t *testing.T) {
	f := newJWTFixture(t)
	tok := mint(t, validClaims(), f.ed1)
	parsed, err := jwt.Parse(tok, func(*jwt.Token) (any, error) { return f.ed1.priv.Public(), nil },
		jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithIssuer(testIssuer), jwt.WithAudience(testAud),
		jwt.WithTimeFunc(func() time.Time { return testNow }), jwt.WithExpirationRequired())
	if err != nil || !parsed.Valid {
		t.Fatalf("jwt library rejects our token: %v", err)
	}
	m := jwt.MapClaims(payload(nil))
	lt := jwt.NewWithClaims(jwt.SigningMethodHS256, m)
	lt.Header["kid"] = "hs-1"
	s, err := lt.SignedString(hsSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(s, f.ks, f.opts); err != nil {
		t.Fatalf("library-minted token rejected: %v", err)
	}
}

func TestVerifyAttacks(t *testing.T) {
	f := newJWTFixture(t)
	good := mint(t, validClaims(), f.ed1)
	parts := strings.Split(good, ".")
	edPub := []byte(f.ed1.priv.Public().(ed25519.PublicKey))

	// kid swapping: signed by ed-1's private key, header names ed-2.
	swapped := *f.ed1
	swapped.KID = "ed-2"
	// A token whose signature has non-canonical trailing bits: same
	// signature bytes for a lenient decoder, a different string.
	sig := parts[2]
	last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", sig[len(sig)-1])
	malleable := parts[0] + "." + parts[1] + "." + sig[:len(sig)-1] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last|1])
	// Tampered payload: role escalated, original signature kept.
	var pl map[string]any
	raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
	_ = json.Unmarshal(raw, &pl)
	pl["role"] = "admin"
	escalated := parts[0] + "." + enc(pl) + "." + parts[2]
	flipped := []byte(good)
	if flipped[len(flipped)-5] == 'A' {
		flipped[len(flipped)-5] = 'B'
	} else {
		flipped[len(flipped)-5] = 'A'
	}

	edHdr := map[string]any{"alg": "EdDSA", "kid": "ed-1", "typ": "JWT"}
	hsHdr := map[string]any{"alg": "HS256", "kid": "hs-1", "typ": "JWT"}

	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"alg none, no signature", enc(map[string]any{"alg": "none"}) + "." + parts[1] + ".", ErrTokenMalformed},
		{"alg none with kid", craft(map[string]any{"alg": "none", "kid": "ed-1"}, payload(nil), func(string) []byte { return []byte("x") }), ErrTokenAlgorithm},
		{"alg None", craft(map[string]any{"alg": "None", "kid": "ed-1"}, payload(nil), func(string) []byte { return []byte("x") }), ErrTokenAlgorithm},
		{"alg NONE", craft(map[string]any{"alg": "NONE"}, payload(nil), func(string) []byte { return []byte("x") }), ErrTokenAlgorithm},
		{"alg missing", craft(map[string]any{"kid": "ed-1"}, payload(nil), edSign(f.ed1)), ErrTokenAlgorithm},
		{"alg RS256", craft(map[string]any{"alg": "RS256", "kid": "ed-1"}, payload(nil), edSign(f.ed1)), ErrTokenAlgorithm},
		{"alg eddsa lower-case", craft(map[string]any{"alg": "eddsa", "kid": "ed-1"}, payload(nil), edSign(f.ed1)), ErrTokenAlgorithm},
		{"alg confusion: HS256 with the Ed25519 public key as secret", craft(map[string]any{"alg": "HS256", "kid": "ed-1"}, payload(nil), hsSign(edPub)), ErrTokenAlgorithm},
		{"alg confusion: HS256 with the base64 public key as secret", craft(map[string]any{"alg": "HS256", "kid": "ed-1"}, payload(nil), hsSign([]byte(base64.RawURLEncoding.EncodeToString(edPub)))), ErrTokenAlgorithm},
		{"alg confusion: EdDSA header on the HS256 kid", craft(map[string]any{"alg": "EdDSA", "kid": "hs-1"}, payload(nil), edSign(f.ed1)), ErrTokenAlgorithm},
		{"kid swapping", mint(t, validClaims(), &swapped), ErrTokenSignature},
		{"unknown kid", craft(map[string]any{"alg": "EdDSA", "kid": "nope"}, payload(nil), edSign(f.ed1)), ErrUnknownKey},
		{"kid with path characters", craft(map[string]any{"alg": "EdDSA", "kid": "../../etc/passwd"}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"kid not a string", craft(map[string]any{"alg": "EdDSA", "kid": 7}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"missing kid, several keys", craft(map[string]any{"alg": "EdDSA"}, payload(nil), edSign(f.ed1)), ErrUnknownKey},
		{"retired kid", mint(t, validClaims(), f.edRetired), ErrKeyRetired},
		{"tampered payload", escalated, ErrTokenSignature},
		{"flipped signature bit", string(flipped), ErrTokenSignature},
		{"signature of another token", parts[0] + "." + parts[1] + "." + strings.Split(mint(t, func() Claims { c := validClaims(); c.ID = "x"; return c }(), f.ed1), ".")[2], ErrTokenSignature},
		{"non-canonical signature encoding", malleable, ErrTokenMalformed},
		{"short signature", parts[0] + "." + parts[1] + "." + parts[2][:40], ErrTokenSignature},
		{"HS256 wrong secret", craft(hsHdr, payload(nil), hsSign(bytes.Repeat([]byte("k"), 32))), ErrTokenSignature},
		{"jwk header (embedded key)", craft(map[string]any{"alg": "EdDSA", "kid": "ed-1", "jwk": map[string]any{"kty": "OKP"}}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"jku header", craft(map[string]any{"alg": "EdDSA", "kid": "ed-1", "jku": "https://evil.test/jwks"}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"x5u header", craft(map[string]any{"alg": "EdDSA", "kid": "ed-1", "x5u": "https://evil.test/c"}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"crit header", craft(map[string]any{"alg": "EdDSA", "kid": "ed-1", "crit": []string{"exp"}}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"b64 false", craft(map[string]any{"alg": "EdDSA", "kid": "ed-1", "b64": false}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"typ at+jwt", craft(map[string]any{"alg": "EdDSA", "kid": "ed-1", "typ": "at+jwt"}, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"header is an array", craft(`["EdDSA"]`, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"header not JSON", craft(`{alg:EdDSA}`, payload(nil), edSign(f.ed1)), ErrTokenMalformed},
		{"payload is an array (signed)", craft(edHdr, `[1,2]`, edSign(f.ed1)), ErrTokenMalformed},
		{"payload not JSON (signed)", craft(edHdr, `{"sub":`, edSign(f.ed1)), ErrTokenMalformed},
		{"wrong audience", craft(edHdr, payload(func(m map[string]any) { m["aud"] = "other" }), edSign(f.ed1)), ErrTokenAudience},
		{"audience list without ours", craft(edHdr, payload(func(m map[string]any) { m["aud"] = []string{"a", "b"} }), edSign(f.ed1)), ErrTokenAudience},
		{"audience missing", craft(edHdr, payload(func(m map[string]any) { delete(m, "aud") }), edSign(f.ed1)), ErrTokenAudience},
		{"audience wrong type", craft(edHdr, payload(func(m map[string]any) { m["aud"] = 5 }), edSign(f.ed1)), ErrTokenMalformed},
		{"wrong issuer", craft(edHdr, payload(func(m map[string]any) { m["iss"] = "https://evil.test" }), edSign(f.ed1)), ErrTokenIssuer},
		{"issuer missing", craft(edHdr, payload(func(m map[string]any) { delete(m, "iss") }), edSign(f.ed1)), ErrTokenIssuer},
		{"expired", craft(edHdr, payload(func(m map[string]any) { m["exp"] = testNow.Unix() }), edSign(f.ed1)), ErrTokenExpired},
		{"long expired", craft(edHdr, payload(func(m map[string]any) { m["iat"] = 1000; m["exp"] = 2000 }), edSign(f.ed1)), ErrTokenExpired},
		{"not yet valid (nbf)", craft(edHdr, payload(func(m map[string]any) { m["nbf"] = testNow.Unix() + 1 }), edSign(f.ed1)), ErrTokenNotYetValid},
		{"issued in the future", craft(edHdr, payload(func(m map[string]any) { m["iat"] = testNow.Unix() + 60 }), edSign(f.ed1)), ErrTokenNotYetValid},
		{"missing exp", craft(edHdr, payload(func(m map[string]any) { delete(m, "exp") }), edSign(f.ed1)), ErrTokenClaims},
		{"null exp", craft(edHdr, payload(func(m map[string]any) { m["exp"] = nil }), edSign(f.ed1)), ErrTokenClaims},
		{"exp as string", craft(edHdr, payload(func(m map[string]any) { m["exp"] = "9999999999" }), edSign(f.ed1)), ErrTokenMalformed},
		{"exp negative", craft(edHdr, payload(func(m map[string]any) { m["exp"] = -5 }), edSign(f.ed1)), ErrTokenMalformed},
		{"exp overflowing", craft(edHdr, `{"sub":"u","tenant_id":"t","role":"admin","iss":"https://guard.test","aud":"allsource","iat":1,"exp":1e300,"jti":"j","typ":"access"}`, edSign(f.ed1)), ErrTokenMalformed},
		{"missing iat", craft(edHdr, payload(func(m map[string]any) { delete(m, "iat") }), edSign(f.ed1)), ErrTokenClaims},
		{"exp before iat", craft(edHdr, payload(func(m map[string]any) { m["iat"] = testNow.Unix() - 10; m["exp"] = testNow.Unix() - 20 }), edSign(f.ed1)), ErrTokenClaims},
		{"missing jti", craft(edHdr, payload(func(m map[string]any) { delete(m, "jti") }), edSign(f.ed1)), ErrTokenClaims},
		{"missing sub", craft(edHdr, payload(func(m map[string]any) { delete(m, "sub") }), edSign(f.ed1)), ErrTokenClaims},
		{"missing tenant_id", craft(edHdr, payload(func(m map[string]any) { delete(m, "tenant_id") }), edSign(f.ed1)), ErrTokenClaims},
		{"missing role", craft(edHdr, payload(func(m map[string]any) { delete(m, "role") }), edSign(f.ed1)), ErrTokenClaims},
		{"unknown role", craft(edHdr, payload(func(m map[string]any) { m["role"] = "superuser" }), edSign(f.ed1)), ErrTokenClaims},
		{"role not canonical", craft(edHdr, payload(func(m map[string]any) { m["role"] = "Admin" }), edSign(f.ed1)), ErrTokenClaims},
		{"refresh typ used as access", craft(edHdr, payload(func(m map[string]any) { m["typ"] = "refresh" }), edSign(f.ed1)), ErrTokenUse},
		{"typ missing", craft(edHdr, payload(func(m map[string]any) { delete(m, "typ") }), edSign(f.ed1)), ErrTokenUse},
		{"empty", "", ErrTokenMalformed},
		{"one segment", parts[0], ErrTokenMalformed},
		{"two segments", parts[0] + "." + parts[1], ErrTokenMalformed},
		{"four segments", good + ".x", ErrTokenMalformed},
		{"empty payload", parts[0] + ".." + parts[2], ErrTokenMalformed},
		{"padding", parts[0] + "=." + parts[1] + "." + parts[2], ErrTokenMalformed},
		{"std base64 character", good[:len(good)-5] + "+" + good[len(good)-4:], ErrTokenMalformed},
		{"whitespace", " " + good, ErrTokenMalformed},
		{"bearer prefix left on", "Bearer " + good, ErrTokenMalformed},
		{"too long", parts[0] + "." + strings.Repeat("A", MaxTokenBytes) + "." + parts[2], ErrTokenMalformed},
		{"huge header", enc(`{"alg":"EdDSA","kid":"ed-1","x":"`+strings.Repeat("a", 600)+`"}`) + "." + parts[1] + "." + parts[2], ErrTokenMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Verify(c.token, f.ks, f.opts)
			if err == nil {
				t.Fatalf("accepted: %+v", got)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			if !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("%v does not match ErrTokenInvalid", err)
			}
			if got.Subject != "" || got.Role != "" {
				t.Fatalf("claims returned with an error: %+v", got)
			}
		})
	}
}

func TestVerifyTimeAndLeeway(t *testing.T) {
	f := newJWTFixture(t)
	c := validClaims()
	c.NotBefore = testNow.Add(10 * time.Second)
	tok := mint(t, c, f.ed1)
	at := func(now time.Time, leeway time.Duration) error {
		o := f.opts
		o.Now, o.Leeway = now, leeway
		_, err := Verify(tok, f.ks, o)
		return err
	}
	cases := []struct {
		name   string
		now    time.Time
		leeway time.Duration
		want   error
	}{
		{"before nbf", testNow, 0, ErrTokenNotYetValid},
		{"before nbf within leeway", testNow, 10 * time.Second, nil},
		{"at nbf", c.NotBefore, 0, nil},
		{"one second before exp", c.ExpiresAt.Add(-time.Second), 0, nil},
		{"at exp", c.ExpiresAt, 0, ErrTokenExpired},
		{"after exp within leeway", c.ExpiresAt.Add(20 * time.Second), 30 * time.Second, nil},
		{"after exp beyond leeway", c.ExpiresAt.Add(30 * time.Second), 30 * time.Second, ErrTokenExpired},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := at(tc.now, tc.leeway)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v want %v", err, tc.want)
			}
		})
	}
}

func TestVerifyOptionsAndKeySelection(t *testing.T) {
	f := newJWTFixture(t)
	tok := mint(t, validClaims(), f.ed1)
	for name, o := range map[string]VerifyOptions{
		"no issuer":      {Audience: testAud, Now: testNow},
		"no audience":    {Issuer: testIssuer, Now: testNow},
		"no clock":       {Issuer: testIssuer, Audience: testAud},
		"negative skew":  {Issuer: testIssuer, Audience: testAud, Now: testNow, Leeway: -time.Second},
		"everything off": {},
	} {
		if _, err := Verify(tok, f.ks, o); !errors.Is(err, ErrVerifyOptions) || errors.Is(err, ErrTokenInvalid) {
			t.Errorf("%s: got %v", name, err)
		}
	}
	if _, err := Verify(tok, nil, f.opts); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("nil key set: %v", err)
	}

	// Without kid, a set with exactly one usable key uses it.
	noKid := craft(map[string]any{"alg": "EdDSA"}, payload(nil), edSign(f.ed1))
	v1, _ := f.ed1.VerificationKey(KeyActive)
	vOld, _ := f.edRetired.VerificationKey(KeyRetired)
	single, _ := NewKeySet(v1, vOld)
	if _, err := Verify(noKid, single, f.opts); err != nil {
		t.Fatalf("single usable key, no kid: %v", err)
	}
	hsOnly, _ := f.hs.VerificationKey(KeyActive)
	hsSet, _ := NewKeySet(hsOnly)
	// Without kid, the algorithm must still match the only key.
	edPub := []byte(f.ed1.priv.Public().(ed25519.PublicKey))
	edOnly, _ := NewKeySet(v1)
	for name, c := range map[string]struct {
		tok string
		ks  *KeySet
	}{
		"EdDSA token, HS256-only set": {noKid, hsSet},
		"HS256 token, EdDSA-only set": {craft(map[string]any{"alg": "HS256"}, payload(nil), hsSign(edPub)), edOnly},
	} {
		if _, err := Verify(c.tok, c.ks, f.opts); !errors.Is(err, ErrTokenAlgorithm) {
			t.Errorf("%s: %v", name, err)
		}
	}

	// A refresh-typ JWT is accepted only when asked for.
	rc := validClaims()
	rc.Use = TokenRefresh
	rt := mint(t, rc, f.ed1)
	o := f.opts
	o.Use = TokenRefresh
	if _, err := Verify(rt, f.ks, o); err != nil {
		t.Fatalf("refresh use: %v", err)
	}
	if _, err := Verify(tok, f.ks, o); !errors.Is(err, ErrTokenUse) {
		t.Fatalf("access token accepted as refresh: %v", err)
	}
	// The operator role is a valid claim (the caller decides what it may do).
	oc := validClaims()
	oc.Role = RoleOperator
	if _, err := Verify(mint(t, oc, f.ed1), f.ks, f.opts); err != nil {
		t.Fatalf("operator token: %v", err)
	}
	// Audience lists are fine when ours is among them.
	ac := validClaims()
	ac.Audience = []string{"other", testAud}
	if got, err := Verify(mint(t, ac, f.hs), f.ks, f.opts); err != nil || len(got.Audience) != 2 {
		t.Fatalf("audience list: %+v %v", got, err)
	}
}

// Tokens minted here take the header fast path; the same header spelled
// differently takes the full parse and reaches the same decisions.
func TestVerifyHeaderFastPath(t *testing.T) {
	f := newJWTFixture(t)
	for _, k := range []*SigningKey{f.ed1, f.ed2, f.edRetired, f.hs} {
		tok := mint(t, validClaims(), k)
		vk, _ := f.ks.Lookup(k.KID)
		if got, ok := f.ks.byHeader[strings.Split(tok, ".")[0]]; !ok || got != vk {
			t.Fatalf("%s: minted header %q is not the cached canonical header", k.KID, strings.Split(tok, ".")[0])
		}
	}
	reordered := map[string]any{"typ": "JWT", "kid": "ed-1", "alg": "EdDSA"}
	slow := enc(`{"kid":"ed-1","alg":"EdDSA"}`)
	if _, ok := f.ks.byHeader[slow]; ok {
		t.Fatal("a different spelling must not hit the cache")
	}
	if _, err := Verify(craft(`{"kid":"ed-1","alg":"EdDSA"}`, payload(nil), edSign(f.ed1)), f.ks, f.opts); err != nil {
		t.Fatalf("reordered header: %v", err)
	}
	if _, err := Verify(craft(reordered, payload(nil), edSign(f.ed1)), f.ks, f.opts); err != nil {
		t.Fatalf("reordered header: %v", err)
	}
	// Cached headers of retired keys are still refused.
	if _, err := Verify(mint(t, validClaims(), f.edRetired), f.ks, f.opts); !errors.Is(err, ErrKeyRetired) {
		t.Fatalf("retired key through the fast path: %v", err)
	}
	// A cached header with a broken remainder is still malformed.
	tok := mint(t, validClaims(), f.ed1)
	for _, bad := range []string{tok + ".x", strings.Replace(tok, ".", "..", 1), tok[:strings.LastIndexByte(tok, '.')+1], tok + "=", tok[:strings.IndexByte(tok, '.')+1] + "%" + tok[strings.IndexByte(tok, '.')+2:]} {
		if _, err := Verify(bad, f.ks, f.opts); !errors.Is(err, ErrTokenMalformed) {
			t.Fatalf("%q: %v", bad, err)
		}
	}
	// Audience decoding: plain string, escaped string, list.
	base := `{"sub":"u","tenant_id":"t","role":"admin","iss":"` + testIssuer + `","iat":` + fmt.Sprint(testNow.Unix()-5) +
		`,"exp":` + fmt.Sprint(testNow.Unix()+60) + `,"jti":"j","typ":"access","aud":`
	for aud, ok := range map[string]bool{`"allsource"`: true, `"allsourc\u0065"`: true, `["x","allsource"]`: true,
		`"allsource "`: false, `"\u0061llsource"`: true, `"Allsource"`: false, `[]`: false, `""`: false} {
		_, err := Verify(craft(map[string]any{"alg": "EdDSA", "kid": "ed-1"}, base+aud+"}", edSign(f.ed1)), f.ks, f.opts)
		if (err == nil) != ok {
			t.Errorf("aud %s: %v", aud, err)
		}
	}
}

// Every prefix of a valid token is rejected, and no prefix panics.
func TestVerifyTruncated(t *testing.T) {
	f := newJWTFixture(t)
	for _, k := range []*SigningKey{f.ed1, f.hs} {
		tok := mint(t, validClaims(), k)
		for i := 0; i < len(tok); i++ {
			if _, err := Verify(tok[:i], f.ks, f.opts); err == nil || !errors.Is(err, ErrTokenInvalid) {
				t.Fatalf("%s prefix of %d bytes: %v", k.KID, i, err)
			}
		}
	}
}

func TestMintRefuses(t *testing.T) {
	f := newJWTFixture(t)
	edits := map[string]func(*Claims){
		"no sub":        func(c *Claims) { c.Subject = "" },
		"no tenant":     func(c *Claims) { c.TenantID = "" },
		"bad role":      func(c *Claims) { c.Role = "root" },
		"no issuer":     func(c *Claims) { c.Issuer = "" },
		"no audience":   func(c *Claims) { c.Audience = nil },
		"empty aud":     func(c *Claims) { c.Audience = []string{""} },
		"no jti":        func(c *Claims) { c.ID = "" },
		"no use":        func(c *Claims) { c.Use = "" },
		"no iat":        func(c *Claims) { c.IssuedAt = time.Time{} },
		"exp = iat":     func(c *Claims) { c.ExpiresAt = c.IssuedAt },
		"nbf after exp": func(c *Claims) { c.NotBefore = c.ExpiresAt.Add(time.Second) },
	}
	for name, edit := range edits {
		c := validClaims()
		edit(&c)
		if _, err := Mint(c, f.ed1); !errors.Is(err, ErrTokenClaims) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Mint(validClaims(), nil); err == nil {
		t.Error("nil key accepted")
	}
	if _, err := Mint(validClaims(), &SigningKey{KID: "x", Alg: AlgEdDSA}); err == nil {
		t.Error("key without private part accepted")
	}
	if _, err := Mint(validClaims(), &SigningKey{KID: "x", Alg: "RS256"}); err == nil {
		t.Error("unsupported alg accepted")
	}
}

func TestParseUnverifiedHeader(t *testing.T) {
	f := newJWTFixture(t)
	h, err := ParseUnverifiedHeader(mint(t, validClaims(), f.hs))
	if err != nil || h != (Header{Alg: AlgHS256, KID: "hs-1", Typ: "JWT"}) {
		t.Fatalf("%+v %v", h, err)
	}
	for _, bad := range []string{"", "a.b", "a.b.c.d", "....", "e30.e30.e30", "%%%.e30.e30", enc(`{"alg":"none"}`) + ".e30.x"} {
		if _, err := ParseUnverifiedHeader(bad); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
