package auth

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// FuzzParseAPIKey: arbitrary input never panics; whatever parses is exactly
// the canonical form of its id and secret (so one key has one spelling), and
// only the seeded key verifies against its stored hash.
func FuzzParseAPIKey(f *testing.F) {
	raw, key, err := NewAPIKey(bytes.NewReader(bytes.Repeat([]byte{7, 200, 33, 90}, 64)))
	if err != nil {
		f.Fatal(err)
	}
	stored := testPepper.HashAPIKey(key)
	for _, s := range []string{raw, raw[:85], raw + "x", "ask_", "", "asr_" + raw[4:], strings.ToUpper(raw),
		raw[:40] + "_" + raw[41:], "ask_" + strings.Repeat("0", 32) + "_" + strings.Repeat("0", 49)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseAPIKey(s)
		if err != nil {
			if !errors.Is(err, ErrAPIKeyMalformed) || k != (APIKey{}) {
				t.Fatalf("error %v with key %+v", err, k)
			}
			return
		}
		body := APIKeyPrefix + k.ID + "_" + k.Secret
		if canon := string(appendChecksum([]byte(body), body)); canon != s {
			t.Fatalf("parsed %q but its canonical form is %q", s, canon)
		}
		if VerifyAPIKeySecret(testPepper, k, stored) != (s == raw) {
			t.Fatalf("verification of %q disagrees with identity to the seeded key", s)
		}
	})
}

// FuzzVerifyJWT: arbitrary strings never panic, every error matches
// ErrTokenInvalid, and nothing verifies except the valid seed tokens
// themselves, byte for byte.
func FuzzVerifyJWT(f *testing.F) {
	ed, err := GenerateSigningKey(bytes.NewReader(bytes.Repeat([]byte{1}, 32)), "ed-1", testNow)
	if err != nil {
		f.Fatal(err)
	}
	ed2, _ := GenerateSigningKey(bytes.NewReader(bytes.Repeat([]byte{2}, 32)), "ed-2", testNow)
	hs, _ := NewHS256SigningKey("hs-1", hsSecret, testNow)
	v1, _ := ed.VerificationKey(KeyActive)
	v2, _ := ed2.VerificationKey(KeyRetired)
	v3, _ := hs.VerificationKey(KeyActive)
	ks, _ := NewKeySet(v1, v2, v3)
	opts := VerifyOptions{Issuer: testIssuer, Audience: testAud, Now: testNow}

	valid := map[string]bool{}
	for _, k := range []*SigningKey{ed, hs} {
		tok, err := Mint(validClaims(), k)
		if err != nil {
			f.Fatal(err)
		}
		valid[tok] = true
		f.Add(tok)
		p := strings.Split(tok, ".")
		f.Add(p[0] + "." + p[1] + ".")
		f.Add(enc(`{"alg":"none"}`) + "." + p[1] + ".")
		f.Add(enc(`{"alg":"HS256","kid":"ed-1"}`) + "." + p[1] + "." + p[2])
		f.Add(p[0] + "." + enc(`{"sub":"x","exp":1e999}`) + "." + p[2])
	}
	retired, _ := Mint(validClaims(), ed2)
	f.Add(retired)
	f.Add("")
	f.Add("...")
	f.Add("eyJ.eyJ.eyJ")

	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseUnverifiedHeader(s)
		c, err := Verify(s, ks, opts)
		if err == nil {
			if !valid[s] {
				t.Fatalf("verified a token that was never minted: %q → %+v", s, c)
			}
			return
		}
		if !errors.Is(err, ErrTokenInvalid) {
			t.Fatalf("error does not match ErrTokenInvalid: %v", err)
		}
	})
}

// fuzzLimits keep each fuzzed argon2 run tiny; the parser and the checks are
// the same as VerifyPassword's.
var fuzzLimits = paramLimits{maxMemory: 256, maxTime: 2, maxThreads: 4}

// FuzzVerifyPHC: arbitrary PHC strings and passwords never panic; errors are
// ErrPHCMalformed or ErrPasswordTooLong; whatever parses is in canonical form;
// only the seed's password verifies against the seed hash.
func FuzzVerifyPHC(f *testing.F) {
	good, err := HashPassword(nil, "pw", cheap)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "pw")
	f.Add(good, "pW")
	f.Add(strings.Replace(good, "m=64", "m=4294967295", 1), "pw")
	f.Add(strings.Replace(good, "t=1", "t=01", 1), "pw")
	f.Add("$argon2id$v=19$m=8,t=1,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "")
	f.Add("$argon2id$v=19$$$$", "x")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, phc, pw string) {
		ok, rehash, err := verifyPassword(phc, pw, cheap, fuzzLimits)
		if err != nil {
			if ok || rehash || !(errors.Is(err, ErrPHCMalformed) || errors.Is(err, ErrPasswordTooLong)) {
				t.Fatalf("ok=%v rehash=%v err=%v", ok, rehash, err)
			}
			return
		}
		p, salt, key, err := parsePHC(phc, fuzzLimits)
		if err != nil {
			t.Fatalf("verified without parsing: %v", err)
		}
		if canon := encodePHC(p, salt, key); canon != phc {
			t.Fatalf("accepted non-canonical %q (canonical %q)", phc, canon)
		}
		if phc == good && ok != (pw == "pw") {
			t.Fatalf("seed hash: password %q ok=%v", pw, ok)
		}
	})
}
