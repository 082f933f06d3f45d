package auth

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestGenerateSigningKey(t *testing.T) {
	seed := bytes.Repeat([]byte{42}, 32)
	a, err := GenerateSigningKey(bytes.NewReader(seed), "k1", testNow)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := GenerateSigningKey(bytes.NewReader(seed), "k1", testNow)
	if !bytes.Equal(a.priv, b.priv) || !bytes.Equal(a.priv, ed25519.NewKeyFromSeed(seed)) {
		t.Fatal("key is not derived from the reader's 32 bytes")
	}
	if a.Alg != AlgEdDSA || a.KID != "k1" || !a.Created.Equal(testNow) {
		t.Fatalf("%v", a)
	}
	for _, kid := range []string{"", "has space", "a/b", strings.Repeat("k", 65), "ünï"} {
		if _, err := GenerateSigningKey(nil, kid, testNow); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("kid %q: %v", kid, err)
		}
	}
	if _, err := GenerateSigningKey(bytes.NewReader([]byte{1, 2}), "k", testNow); err == nil {
		t.Fatal("short randomness accepted")
	}
}

func TestHS256SecretLength(t *testing.T) {
	if _, err := NewHS256SigningKey("h", make([]byte, 31), testNow); !errors.Is(err, ErrSecretTooShort) {
		t.Fatalf("signing key: %v", err)
	}
	if _, err := NewHS256VerificationKey("h", make([]byte, 31), KeyActive); !errors.Is(err, ErrSecretTooShort) {
		t.Fatalf("verification key: %v", err)
	}
	if _, err := NewHS256SigningKey("h", make([]byte, 32), testNow); err != nil {
		t.Fatal(err)
	}
}

func TestSigningKeySerialisation(t *testing.T) {
	ed, _ := GenerateSigningKey(nil, "ed-7", testNow)
	hs, _ := NewHS256SigningKey("hs-7", hsSecret, testNow)
	for _, k := range []*SigningKey{ed, hs} {
		b, err := k.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseSigningKey(b)
		if err != nil {
			t.Fatal(err)
		}
		if back.KID != k.KID || back.Alg != k.Alg || !back.Created.Equal(k.Created) ||
			!bytes.Equal(back.priv, k.priv) || !bytes.Equal(back.secret, k.secret) {
			t.Fatalf("round trip changed the key: %v vs %v", back, k)
		}
		// A token minted with the reloaded key verifies with the original.
		vk, _ := k.VerificationKey(KeyActive)
		ks, _ := NewKeySet(vk)
		if _, err := Verify(mint(t, validClaims(), back), ks, VerifyOptions{Issuer: testIssuer, Audience: testAud, Now: testNow}); err != nil {
			t.Fatal(err)
		}
	}
	seed := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	for name, in := range map[string]string{
		"not json":     "nope",
		"version 2":    `{"v":2,"kid":"a","alg":"EdDSA","key":"` + seed + `"}`,
		"bad alg":      `{"v":1,"kid":"a","alg":"RS256","key":"` + seed + `"}`,
		"short seed":   `{"v":1,"kid":"a","alg":"EdDSA","key":"AAAA"}`,
		"short secret": `{"v":1,"kid":"a","alg":"HS256","key":"AAAA"}`,
		"bad kid":      `{"v":1,"kid":"a b","alg":"EdDSA","key":"` + seed + `"}`,
		"bad base64":   `{"v":1,"kid":"a","alg":"EdDSA","key":"***"}`,
	} {
		if _, err := ParseSigningKey([]byte(in)); !errors.Is(err, ErrInvalidKey) && !errors.Is(err, ErrSecretTooShort) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestKeysNotPrinted(t *testing.T) {
	ed, _ := GenerateSigningKey(nil, "ed-p", testNow)
	hs, _ := NewHS256SigningKey("hs-p", hsSecret, testNow)
	hv, _ := hs.VerificationKey(KeyActive)
	seedHex := fmt.Sprintf("%x", ed.priv.Seed())
	for _, v := range []any{ed, hs, hv} {
		for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
			out := fmt.Sprintf(f, v)
			if strings.Contains(out, seedHex) || strings.Contains(out, string(hsSecret)) || strings.Contains(out, fmt.Sprint([]byte(ed.priv))) {
				t.Fatalf("%s leaks key material: %s", f, out)
			}
		}
	}
}

func TestKeySet(t *testing.T) {
	a, _ := GenerateSigningKey(nil, "b-key", testNow)
	b, _ := GenerateSigningKey(nil, "a-key", testNow)
	va, _ := a.VerificationKey(KeyActive)
	vb, _ := b.VerificationKey(KeyVerifyOnly)
	if _, err := NewKeySet(va, va); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("duplicate kid: %v", err)
	}
	if _, err := NewKeySet(va, nil); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("nil key: %v", err)
	}
	if _, err := NewKeySet(&VerificationKey{}); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("zero key: %v", err)
	}
	if _, err := a.VerificationKey("dormant"); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("bad state: %v", err)
	}
	ks, err := NewKeySet(va, vb)
	if err != nil {
		t.Fatal(err)
	}
	if ks.Len() != 2 || ks.Keys()[0].KID() != "a-key" || ks.Keys()[1].KID() != "b-key" {
		t.Fatal("keys not sorted by kid")
	}
	if k, ok := ks.Lookup("b-key"); !ok || k.State() != KeyActive || k.Alg() != AlgEdDSA || !bytes.Equal(k.Ed25519PublicKey(), a.priv.Public().(ed25519.PublicKey)) {
		t.Fatal("lookup")
	}
	r, err := va.WithState(KeyRetired)
	if err != nil || r.State() != KeyRetired || va.State() != KeyActive {
		t.Fatal("WithState must copy")
	}
	var nilSet *KeySet
	if _, ok := nilSet.Lookup("x"); ok || nilSet.Len() != 0 || nilSet.Keys() != nil {
		t.Fatal("nil set")
	}
}

// RFC 8037 Appendix A: the Ed25519 key pair and the JWS signed with it.
func TestRFC8037Vectors(t *testing.T) {
	d, _ := base64.RawURLEncoding.DecodeString("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
	x := "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
	priv := ed25519.NewKeyFromSeed(d)
	if got := base64.RawURLEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)); got != x {
		t.Fatalf("public key %s, want %s", got, x)
	}
	ks, err := ParseJWKS([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"rfc8037"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ks.Lookup("rfc8037")
	jws := "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
	parts := strings.Split(jws, ".")
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	if !ed25519.Verify(k.Ed25519PublicKey(), []byte(parts[0]+"."+parts[1]), sig) {
		t.Fatal("RFC 8037 A.4 signature does not verify with the parsed JWKS key")
	}
	// Its payload is not a claims object, so Verify refuses it — after the
	// signature check passed (malformed, not a signature error).
	if _, err := Verify(jws, ks, VerifyOptions{Issuer: "i", Audience: "a", Now: testNow}); !errors.Is(err, ErrTokenMalformed) {
		t.Fatalf("want ErrTokenMalformed, got %v", err)
	}
}

func TestJWKSRoundTrip(t *testing.T) {
	f := newJWTFixture(t)
	doc, err := MarshalJWKS(f.ks)
	if err != nil {
		t.Fatal(err)
	}
	x1 := base64.RawURLEncoding.EncodeToString(f.ed1.priv.Public().(ed25519.PublicKey))
	x2 := base64.RawURLEncoding.EncodeToString(f.ed2.priv.Public().(ed25519.PublicKey))
	want := `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x1 + `","kid":"ed-1","alg":"EdDSA","use":"sig"},` +
		`{"kty":"OKP","crv":"Ed25519","x":"` + x2 + `","kid":"ed-2","alg":"EdDSA","use":"sig"}]}`
	if string(doc) != want {
		t.Fatalf("JWKS\n got %s\nwant %s", doc, want)
	}
	if bytes.Contains(doc, hsSecret) || bytes.Contains(doc, []byte("hs-1")) || bytes.Contains(doc, []byte("ed-old")) {
		t.Fatal("JWKS publishes an HS256 secret or a retired key")
	}
	edge, err := ParseJWKS(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range edge.Keys() {
		if k.State() != KeyVerifyOnly {
			t.Fatalf("edge key %s is %s", k.KID(), k.State())
		}
	}
	for _, k := range []*SigningKey{f.ed1, f.ed2} {
		if _, err := Verify(mint(t, validClaims(), k), edge, f.opts); err != nil {
			t.Fatalf("%s: %v", k.KID, err)
		}
	}
	// HS256 tokens cannot be verified (or minted) from the public JWKS.
	if _, err := Verify(mint(t, validClaims(), f.hs), edge, f.opts); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("HS256 token on the edge: %v", err)
	}
	empty, _ := NewKeySet()
	if doc, _ := MarshalJWKS(empty); string(doc) != `{"keys":[]}` {
		t.Fatalf("empty set: %s", doc)
	}
}

func TestParseJWKSRejects(t *testing.T) {
	x := base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))
	key := func(extra string) string {
		return `{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"k1"` + extra + `}`
	}
	many := make([]string, MaxJWKSKeys+1)
	for i := range many {
		many[i] = `{"kty":"OKP","crv":"Ed25519","x":"` + x + `","kid":"k` + fmt.Sprint(i) + `"}`
	}
	bad := map[string]string{
		"not an object":        `[]`,
		"empty":                ``,
		"no keys":              `{"keys":[]}`,
		"private part":         `{"keys":[` + key(`,"d":"AAAA"`) + `]}`,
		"symmetric key":        `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},` + key("") + `]}`,
		"short x":              `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"k1"}]}`,
		"x not base64url":      `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + strings.Repeat("+", 43) + `","kid":"k1"}]}`,
		"line break in x":      `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x[:20] + `\n` + x[20:] + `","kid":"k1"}]}`,
		"missing kid":          `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + x + `"}]}`,
		"duplicate kid":        `{"keys":[` + key("") + `,` + key("") + `]}`,
		"alg mismatch":         `{"keys":[` + key(`,"alg":"HS256"`) + `]}`,
		"only unsupported":     `{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r"}]}`,
		"only encryption keys": `{"keys":[` + key(`,"use":"enc"`) + `]}`,
		"too many keys":        `{"keys":[` + strings.Join(many, ",") + `]}`,
		"too big":              `{"keys":[` + key("") + `],"pad":"` + strings.Repeat("a", MaxJWKSBytes) + `"}`,
	}
	for name, doc := range bad {
		if _, err := ParseJWKS([]byte(doc)); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Unsupported keys are skipped, not fatal.
	ks, err := ParseJWKS([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r"},` + key(`,"use":"sig","key_ops":["verify"]`) + `]}`))
	if err != nil || ks.Len() != 1 {
		t.Fatalf("mixed set: %v", err)
	}
}
