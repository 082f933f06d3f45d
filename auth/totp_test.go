package auth

import (
	"encoding/base32"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

// RFC 6238 Appendix B: 8-digit codes for the three hash functions, with the
// ASCII seeds "1234567890" repeated to the hash length.
func TestTOTPRFC6238Vectors(t *testing.T) {
	seed := func(n int) string {
		return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte(strings.Repeat("1234567890", 7)[:n]))
	}
	secrets := map[TOTPAlgorithm]string{TOTPSHA1: seed(20), TOTPSHA256: seed(32), TOTPSHA512: seed(64)}
	vectors := []struct {
		unix int64
		want map[TOTPAlgorithm]string
	}{
		{59, map[TOTPAlgorithm]string{TOTPSHA1: "94287082", TOTPSHA256: "46119246", TOTPSHA512: "90693936"}},
		{1111111109, map[TOTPAlgorithm]string{TOTPSHA1: "07081804", TOTPSHA256: "68084774", TOTPSHA512: "25091201"}},
		{1111111111, map[TOTPAlgorithm]string{TOTPSHA1: "14050471", TOTPSHA256: "67062674", TOTPSHA512: "99943326"}},
		{1234567890, map[TOTPAlgorithm]string{TOTPSHA1: "89005924", TOTPSHA256: "91819424", TOTPSHA512: "93441116"}},
		{2000000000, map[TOTPAlgorithm]string{TOTPSHA1: "69279037", TOTPSHA256: "90698825", TOTPSHA512: "38618901"}},
		{20000000000, map[TOTPAlgorithm]string{TOTPSHA1: "65353130", TOTPSHA256: "77737706", TOTPSHA512: "47863826"}},
	}
	for _, v := range vectors {
		for alg, want := range v.want {
			o := TOTP{Algorithm: alg, Digits: 8, Period: 30 * time.Second, Skew: 0}
			now := time.Unix(v.unix, 0)
			got, err := o.Code(secrets[alg], now)
			if err != nil || got != want {
				t.Errorf("%s at %d: got %q %v, want %s", alg, v.unix, got, err, want)
			}
			step, ok, err := o.Validate(secrets[alg], want, now, 0)
			if err != nil || !ok || step != uint64(v.unix/30) {
				t.Errorf("%s at %d: Validate = %d %v %v", alg, v.unix, step, ok, err)
			}
		}
	}
}

func TestTOTPValidateWindowAndReplay(t *testing.T) {
	o := DefaultTOTP
	secret, err := o.GenerateSecret(nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_015, 0) // mid-step
	cur := uint64(now.Unix() / 30)
	code := func(d int) string {
		c, err := o.Code(secret, now.Add(time.Duration(d)*30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cases := []struct {
		name     string
		code     string
		lastUsed uint64
		wantOK   bool
		wantStep uint64
	}{
		{"current", code(0), 0, true, cur},
		{"previous step (skew)", code(-1), 0, true, cur - 1},
		{"next step (skew)", code(1), 0, true, cur + 1},
		{"two steps back", code(-2), 0, false, 0},
		{"two steps ahead", code(2), 0, false, 0},
		{"replay of the step just used", code(0), cur, false, 0},
		{"older code after a newer one was used", code(-1), cur, false, 0},
		{"next step after current was used", code(1), cur, true, cur + 1},
		{"with spaces", code(0)[:3] + " " + code(0)[3:], 0, true, cur},
		{"wrong code", "000000", 0, false, 0},
		{"too short", code(0)[:5], 0, false, 0},
		{"too long", code(0) + "1", 0, false, 0},
		{"letters", "12a456", 0, false, 0},
		{"empty", "", 0, false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "wrong code" && (code(-1) == "000000" || code(0) == "000000" || code(1) == "000000") {
				t.Skip("the random secret produced 000000")
			}
			step, ok, err := o.Validate(secret, c.code, now, c.lastUsed)
			if err != nil || ok != c.wantOK || step != c.wantStep {
				t.Fatalf("Validate = step %d ok %v err %v; want %d %v", step, ok, err, c.wantStep, c.wantOK)
			}
		})
	}
	strict := o
	strict.Skew = 0
	if _, ok, _ := strict.Validate(secret, code(-1), now, 0); ok {
		t.Fatal("skew 0 accepted the previous step")
	}
}

func TestTOTPSecretsAndConfig(t *testing.T) {
	s, err := DefaultTOTP.GenerateSecret(nil)
	if err != nil || len(s) != 32 || strings.ContainsAny(s, "=") {
		t.Fatalf("SHA1 secret %q %v", s, err)
	}
	s512, _ := TOTP{Algorithm: TOTPSHA512, Digits: 6, Period: 30 * time.Second}.GenerateSecret(nil)
	if k, err := DecodeTOTPSecret(s512); err != nil || len(k) != 64 {
		t.Fatalf("SHA512 secret: %d %v", len(k), err)
	}
	// Lenient decoding: lower case, spaces, dashes, padding.
	k1, _ := DecodeTOTPSecret(s)
	lenient := strings.ToLower(s[:4] + " " + s[4:8] + "-" + s[8:] + "====")
	if k2, err := DecodeTOTPSecret(lenient); err != nil || string(k1) != string(k2) {
		t.Fatalf("lenient decode: %v", err)
	}
	for _, bad := range []string{"", "AAAA", "1111111111111111111111111111", strings.Repeat("A", 2000)} {
		if _, err := DecodeTOTPSecret(bad); !errors.Is(err, ErrTOTPSecret) {
			t.Errorf("secret %q: %v", bad, err)
		}
		if _, _, err := DefaultTOTP.Validate(bad, "123456", time.Now(), 0); !errors.Is(err, ErrTOTPSecret) {
			t.Errorf("Validate with secret %q: %v", bad, err)
		}
	}
	for name, o := range map[string]TOTP{
		"zero":          {},
		"md5":           {Algorithm: "MD5", Digits: 6, Period: 30 * time.Second},
		"5 digits":      {Algorithm: TOTPSHA1, Digits: 5, Period: 30 * time.Second},
		"9 digits":      {Algorithm: TOTPSHA1, Digits: 9, Period: 30 * time.Second},
		"half second":   {Algorithm: TOTPSHA1, Digits: 6, Period: 1500 * time.Millisecond},
		"negative skew": {Algorithm: TOTPSHA1, Digits: 6, Period: 30 * time.Second, Skew: -1},
		"huge skew":     {Algorithm: TOTPSHA1, Digits: 6, Period: 30 * time.Second, Skew: 11},
	} {
		if _, _, err := o.Validate(s, "123456", time.Now(), 0); !errors.Is(err, ErrTOTPConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, _, err := DefaultTOTP.Validate(s, "123456", time.Unix(-100, 0), 0); !errors.Is(err, ErrTOTPConfig) {
		t.Errorf("pre-epoch time: %v", err)
	}
}

func TestTOTPProvisioningURI(t *testing.T) {
	secret, _ := DefaultTOTP.GenerateSecret(nil)
	uri, err := DefaultTOTP.ProvisioningURI(secret, "AllSource Guard", "ann@acme.test")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if u.Scheme != "otpauth" || u.Host != "totp" || u.Path != "/AllSource Guard:ann@acme.test" ||
		q.Get("secret") != secret || q.Get("issuer") != "AllSource Guard" || q.Get("algorithm") != "SHA1" ||
		q.Get("digits") != "6" || q.Get("period") != "30" {
		t.Fatalf("uri %s", uri)
	}
	if !strings.HasPrefix(uri, "otpauth://totp/AllSource%20Guard:ann@acme.test?") {
		t.Fatalf("label not path-escaped: %s", uri)
	}
	for _, c := range [][3]string{{secret, "Evil:Issuer", "a"}, {secret, "", "a"}, {secret, "i", ""}, {"short", "i", "a"}} {
		if _, err := DefaultTOTP.ProvisioningURI(c[0], c[1], c[2]); err == nil {
			t.Errorf("accepted %q", c)
		}
	}
}

func TestRecoveryCodes(t *testing.T) {
	codes, err := GenerateRecoveryCodes(nil, 10)
	if err != nil || len(codes) != 10 {
		t.Fatal(err)
	}
	stored := make([]KeyHash, len(codes))
	seen := map[string]bool{}
	for i, c := range codes {
		if len(c) != 19 || strings.Count(c, "-") != 3 || strings.ContainsAny(c, "ilou") || seen[c] {
			t.Fatalf("code %q", c)
		}
		seen[c] = true
		if stored[i], err = testPepper.HashRecoveryCode(c); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		code  string
		index int
		ok    bool
	}{
		{"exact", codes[3], 3, true},
		{"upper case, no dashes", strings.ToUpper(strings.ReplaceAll(codes[7], "-", "")), 7, true},
		{"spaces", strings.ReplaceAll(codes[0], "-", " "), 0, true},
		{"one char wrong", codes[3][:18] + string("0123456789abcdefghjkmnpqrstvwxyz"[(strings.IndexByte("0123456789abcdefghjkmnpqrstvwxyz", codes[3][18])+1)%32]), -1, false},
		{"too short", codes[3][:17], -1, false},
		{"too long", codes[3] + "0", -1, false},
		{"bad char", codes[3][:18] + "!", -1, false},
		{"empty", "", -1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			i, ok := testPepper.MatchRecoveryCode(c.code, stored)
			if i != c.index || ok != c.ok {
				t.Fatalf("got %d %v want %d %v", i, ok, c.index, c.ok)
			}
		})
	}
	// Crockford look-alikes normalise: o→0, i/l→1.
	h1, _ := testPepper.HashRecoveryCode("0000-1111-0000-1111")
	h2, err := testPepper.HashRecoveryCode("oOoO-iIlL-0o0O-1lI1")
	if err != nil || h1 != h2 {
		t.Fatalf("look-alikes: %v", err)
	}
	// Used codes are removed by the server; a removed code no longer matches.
	rest := append(append([]KeyHash(nil), stored[:3]...), stored[4:]...)
	if _, ok := testPepper.MatchRecoveryCode(codes[3], rest); ok {
		t.Fatal("removed code matched")
	}
	// Zero hashes never match (an emptied slot).
	if _, ok := testPepper.MatchRecoveryCode(codes[0], []KeyHash{{}}); ok {
		t.Fatal("zero hash matched")
	}
	if other := mustPepper([]byte(strings.Repeat("p", 32))); func() bool { _, ok := other.MatchRecoveryCode(codes[0], stored); return ok }() {
		t.Fatal("wrong pepper matched")
	}
	for _, n := range []int{0, -1, MaxRecoveryCodes + 1} {
		if _, err := GenerateRecoveryCodes(nil, n); err == nil {
			t.Errorf("n=%d accepted", n)
		}
	}
}
