package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"regexp"
	"strings"
	"testing"
)

var testPepper = mustPepper([]byte("0123456789abcdef0123456789abcdef"))

func mustPepper(b []byte) *Pepper {
	p, err := NewPepper(b)
	if err != nil {
		panic(err)
	}
	return p
}

var apiKeyRE = regexp.MustCompile(`^ask_[0-9a-f]{32}_[0-9A-Za-z]{49}$`)

func TestNewAPIKeyFormat(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		raw, key, err := NewAPIKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !apiKeyRE.MatchString(raw) || len(raw) != 86 {
			t.Fatalf("bad format %q", raw)
		}
		if raw[4:36] != key.ID || raw[37:80] != key.Secret {
			t.Fatalf("id/secret do not match the raw key: %q %+v", raw, key)
		}
		if seen[key.ID] || seen[key.Secret] {
			t.Fatal("repeated id or secret")
		}
		seen[key.ID], seen[key.Secret] = true, true
		got, err := ParseAPIKey(raw)
		if err != nil || got != key {
			t.Fatalf("ParseAPIKey(%q) = %+v, %v", raw, got, err)
		}
	}
}

func TestAPIKeyChecksumIsCRC32OfBody(t *testing.T) {
	raw, _, err := NewAPIKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	body := raw[:len(raw)-6]
	var v uint64
	for _, c := range raw[len(raw)-6:] {
		v = v*62 + uint64(strings.IndexRune(base62, c))
	}
	if v != uint64(crc32.ChecksumIEEE([]byte(body))) {
		t.Fatalf("checksum %d is not CRC-32 %d of %q", v, crc32.ChecksumIEEE([]byte(body)), body)
	}
}

// A reader yielding a fixed byte: base62 sampling must reject bytes ≥ 248
// (an endless run of them is an error, not a hang or a biased key).
type constReader byte

func (c constReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

type limitedReader struct{ n int }

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("exhausted")
	}
	n := min(len(p), l.n)
	l.n -= n
	for i := range p[:n] {
		p[i] = 0xff
	}
	return n, nil
}

func TestRandomBase62(t *testing.T) {
	s, err := randomBase62(constReader(61), 43)
	if err != nil || s != strings.Repeat("z", 43) {
		t.Fatalf("got %q %v", s, err)
	}
	s, err = randomBase62(constReader(62+5), 5)
	if err != nil || s != "55555" {
		t.Fatalf("got %q %v", s, err)
	}
	if _, err := randomBase62(&limitedReader{n: 4096}, 43); err == nil {
		t.Fatal("only rejected bytes, yet a secret came out")
	}
	if _, err := randomBase62(constReader(0xff), 43); err == nil {
		t.Fatal("a source of only rejected bytes must be an error, not a hang")
	}
	if _, _, err := NewAPIKey(&limitedReader{n: 3}); err == nil {
		t.Fatal("short randomness accepted")
	}
	// Roughly uniform over the alphabet.
	big, err := randomBase62(nil, 62*400)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(base62); i++ {
		if n := strings.Count(big, base62[i:i+1]); n < 250 || n > 550 {
			t.Fatalf("character %q occurs %d times in 24800, want ~400", base62[i], n)
		}
	}
}

func TestParseAPIKeyRejects(t *testing.T) {
	raw, _, _ := NewAPIKey(nil)
	body := raw[:80]
	withSum := func(b string) string { return string(appendChecksum([]byte(b), b)) }
	upperID := withSum("ask_" + strings.ToUpper(raw[4:36]) + raw[36:80])
	if strings.ToUpper(raw[4:36]) == raw[4:36] { // all digits: force a letter
		upperID = withSum("ask_A" + raw[5:80])
	}
	cases := []struct {
		name string
		in   string
		want error
	}{
		{"empty", "", ErrAPIKeyMalformed},
		{"prefix only", "ask_", ErrAPIKeyMalformed},
		{"truncated by one", raw[:85], ErrAPIKeyMalformed},
		{"extra char", raw + "a", ErrAPIKeyMalformed},
		{"refresh prefix", "asr_" + raw[4:], ErrAPIKeyMalformed},
		{"upper-case prefix", "ASK_" + raw[4:], ErrAPIKeyMalformed},
		{"upper-case hex id, valid checksum", upperID, ErrAPIKeyMalformed},
		{"underscore in secret", withSum(body[:50] + "_" + body[51:]), ErrAPIKeyMalformed},
		{"missing separator", withSum("ask_" + raw[4:36] + "x" + raw[37:80]), ErrAPIKeyMalformed},
		{"non-ASCII", withSum(body[:79] + "é")[:86], ErrAPIKeyMalformed},
		{"surrounding space", " " + raw[:85], ErrAPIKeyMalformed},
		{"bad checksum", body + "000000", ErrAPIKeyChecksum},
		{"checksum not base62", body + "00000-", ErrAPIKeyMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := ParseAPIKey(c.in)
			if !errors.Is(err, c.want) || k != (APIKey{}) {
				t.Fatalf("ParseAPIKey(%q) = %+v, %v; want %v", c.in, k, err, c.want)
			}
			if !errors.Is(err, ErrAPIKeyMalformed) {
				t.Fatalf("every parse error must match ErrAPIKeyMalformed: %v", err)
			}
		})
	}
}

// Every single-character typo and every adjacent transposition of a key is
// caught by the checksum (CRC-32 detects all bursts up to 32 bits).
func TestAPIKeyTyposDetected(t *testing.T) {
	raw, _, _ := NewAPIKey(nil)
	b := []byte(raw)
	for i := range b {
		orig := b[i]
		for j := 0; j < len(base62); j++ {
			if base62[j] == orig {
				continue
			}
			b[i] = base62[j]
			if _, err := ParseAPIKey(string(b)); err == nil {
				t.Fatalf("typo at %d (%q→%q) accepted", i, orig, base62[j])
			}
		}
		b[i] = orig
		if i+1 < len(b) && b[i] != b[i+1] {
			b[i], b[i+1] = b[i+1], b[i]
			if _, err := ParseAPIKey(string(b)); err == nil {
				t.Fatalf("transposition at %d accepted", i)
			}
			b[i], b[i+1] = b[i+1], b[i]
		}
	}
}

func TestVerifyAPIKeySecret(t *testing.T) {
	raw, key, _ := NewAPIKey(nil)
	_, other, _ := NewAPIKey(nil)
	stored := testPepper.HashAPIKey(key)
	wrongPepper := mustPepper([]byte("another pepper, also 32 bytes long!"))

	// The stored value is exactly HMAC-SHA-256(pepper, "ask_" id "_" secret).
	m := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
	m.Write([]byte(raw[:80]))
	if !bytes.Equal(m.Sum(nil), stored[:]) {
		t.Fatal("HashAPIKey is not HMAC-SHA-256(pepper, ask_<id>_<secret>)")
	}

	parsed, err := ParseAPIKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		pepper *Pepper
		key    APIKey
		stored KeyHash
		want   bool
	}{
		{"right", testPepper, parsed, stored, true},
		{"wrong pepper", wrongPepper, parsed, stored, false},
		{"other key's secret", testPepper, APIKey{ID: key.ID, Secret: other.Secret}, stored, false},
		{"other key's id", testPepper, APIKey{ID: other.ID, Secret: key.Secret}, stored, false},
		{"other key", testPepper, other, stored, false},
		{"zero stored hash", testPepper, parsed, KeyHash{}, false},
		{"nil pepper", nil, parsed, stored, false},
		{"flipped stored bit", testPepper, parsed, func() KeyHash { h := stored; h[31] ^= 1; return h }(), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := VerifyAPIKeySecret(c.pepper, c.key, c.stored); got != c.want {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
}

func TestAPIKeyVerifyAllocationFree(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops entries under the race detector")
	}
	raw, key, _ := NewAPIKey(nil)
	stored := testPepper.HashAPIKey(key)
	allocs := testing.AllocsPerRun(1000, func() {
		k, err := ParseAPIKey(raw)
		if err != nil || !VerifyAPIKeySecret(testPepper, k, stored) {
			panic("verify failed")
		}
	})
	if allocs != 0 {
		t.Fatalf("parse+verify allocates %.1f times per call", allocs)
	}
}

func TestPepper(t *testing.T) {
	if _, err := NewPepper(make([]byte, 31)); !errors.Is(err, ErrPepperTooShort) {
		t.Fatalf("31-byte pepper: %v", err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	p := mustPepper(secret)
	secret[0] = 'X' // the pepper keeps its own copy
	if p.HashAPIKey(APIKey{ID: "a", Secret: "b"}) != testPepper.HashAPIKey(APIKey{ID: "a", Secret: "b"}) {
		t.Fatal("pepper aliases the caller's slice")
	}
	// Inputs longer than the internal buffer hash like the stdlib HMAC.
	long := strings.Repeat("0123456789", 90)
	m := hmac.New(sha256.New, []byte("0123456789abcdef0123456789abcdef"))
	m.Write([]byte("aso\x00" + long))
	got, err := testPepper.HashOperatorToken(long)
	if err != nil || !bytes.Equal(m.Sum(nil), got[:]) {
		t.Fatalf("long input: %x %v", got, err)
	}
	// Domain separation: the same id and secret as different credentials.
	id, sec := strings.Repeat("a", 32), strings.Repeat("B", 43)
	if testPepper.HashAPIKey(APIKey{ID: id, Secret: sec}) == testPepper.HashRefreshToken(RefreshToken{Family: id, Secret: sec}) {
		t.Fatal("API key and refresh token hashes collide")
	}
}

func TestKeyHashText(t *testing.T) {
	h := testPepper.HashAPIKey(APIKey{ID: "x", Secret: "y"})
	b, err := json.Marshal(struct{ H KeyHash }{h})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"`+h.String()+`"`) || len(h.String()) != 64 {
		t.Fatalf("json %s", b)
	}
	var back struct{ H KeyHash }
	if err := json.Unmarshal(b, &back); err != nil || back.H != h || !back.H.Equal(h) {
		t.Fatalf("round trip: %v", err)
	}
	for _, bad := range []string{"", "zz", strings.Repeat("g", 64), h.String()[:62]} {
		if _, err := ParseKeyHash(bad); err == nil {
			t.Fatalf("ParseKeyHash(%q) accepted", bad)
		}
	}
}

func TestSecretsNotPrinted(t *testing.T) {
	_, key, _ := NewAPIKey(nil)
	_, rt, _ := NewRefreshFamily(nil)
	for _, v := range []any{key, &key, rt} {
		for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
			out := fmt.Sprintf(f, v)
			if strings.Contains(out, key.Secret) || strings.Contains(out, rt.Secret) {
				t.Fatalf("%s printed a secret: %s", f, out)
			}
		}
	}
}

func TestRefreshTokens(t *testing.T) {
	raw, tok, err := NewRefreshFamily(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(raw, "asr_") || len(raw) != 86 {
		t.Fatalf("format %q", raw)
	}
	got, err := ParseRefreshToken(raw)
	if err != nil || got != tok {
		t.Fatalf("parse: %+v %v", got, err)
	}
	if _, err := ParseRefreshToken("ask_" + raw[4:]); !errors.Is(err, ErrRefreshMalformed) {
		t.Fatalf("API key accepted as refresh token: %v", err)
	}
	if _, err := ParseAPIKey(raw); err == nil {
		t.Fatal("refresh token accepted as API key")
	}
	if _, _, err := NewRefreshToken(nil, "NOT-HEX"); err == nil {
		t.Fatal("bad family accepted")
	}
	raw2, tok2, err := NewRefreshToken(nil, tok.Family)
	if err != nil || tok2.Family != tok.Family || tok2.Secret == tok.Secret || raw2 == raw {
		t.Fatalf("rotation: %+v %v", tok2, err)
	}
}

func TestCheckRefreshAndRotate(t *testing.T) {
	_, t0, _ := NewRefreshFamily(nil)
	fam := RefreshFamily{ID: t0.Family, Current: testPepper.HashRefreshToken(t0)}
	if v := testPepper.CheckRefresh(fam, t0); v != RefreshValid {
		t.Fatalf("first token: %v", v)
	}
	// Rotate five times, keeping the last three rotated hashes.
	toks := []RefreshToken{t0}
	for range 5 {
		_, next, err := NewRefreshToken(nil, fam.ID)
		if err != nil {
			t.Fatal(err)
		}
		before := fam
		fam = fam.Rotate(testPepper.HashRefreshToken(next), 3)
		if before.Current == fam.Current || len(before.Previous) > 3 {
			t.Fatal("Rotate modified or did not advance the family")
		}
		toks = append(toks, next)
	}
	if len(fam.Previous) != 3 {
		t.Fatalf("kept %d previous hashes, want 3", len(fam.Previous))
	}
	_, stranger, _ := NewRefreshToken(nil, fam.ID)
	_, otherFam, _ := NewRefreshFamily(nil)
	cases := []struct {
		name string
		fam  RefreshFamily
		tok  RefreshToken
		want RefreshVerdict
	}{
		{"current", fam, toks[5], RefreshValid},
		{"just rotated (reuse)", fam, toks[4], RefreshReused},
		{"third newest rotated (reuse)", fam, toks[2], RefreshReused},
		{"older than kept (invalid)", fam, toks[1], RefreshInvalid},
		{"forged secret for the family", fam, stranger, RefreshInvalid},
		{"other family", fam, otherFam, RefreshInvalid},
		{"family id mismatch", RefreshFamily{ID: otherFam.Family, Current: fam.Current}, toks[5], RefreshInvalid},
		{"revoked family, current token", RefreshFamily{ID: fam.ID, Current: fam.Current, Revoked: true}, toks[5], RefreshRevoked},
		{"zero current hash", RefreshFamily{ID: fam.ID}, toks[5], RefreshInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := testPepper.CheckRefresh(c.fam, c.tok); got != c.want {
				t.Fatalf("got %v want %v", got, c.want)
			}
		})
	}
	if got := (*Pepper)(nil).CheckRefresh(fam, toks[5]); got != RefreshInvalid {
		t.Fatalf("nil pepper: %v", got)
	}
	if r := (RefreshFamily{ID: "f", Current: KeyHash{1}}).Rotate(KeyHash{2}, 0); r.Previous != nil || r.Current != (KeyHash{2}) {
		t.Fatalf("keep 0: %+v", r)
	}
}

func TestOperatorTokens(t *testing.T) {
	tok, err := NewOperatorToken(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^aso_[0-9A-Za-z]{49}$`).MatchString(tok) || !checksumOK(tok) {
		t.Fatalf("format %q", tok)
	}
	cases := []struct {
		name string
		tok  string
		ok   bool
	}{
		{"generated", tok, true},
		{"32 printable", strings.Repeat("x", 32), true},
		{"31 chars", strings.Repeat("x", 31), false},
		{"32 runes of multibyte", strings.Repeat("é", 32), true},
		{"inner spaces", "correct horse battery staple ok!", true},
		{"leading space", " " + strings.Repeat("x", 32), false},
		{"trailing newline", strings.Repeat("x", 32) + "\n", false},
		{"control char", strings.Repeat("x", 16) + "\x00" + strings.Repeat("x", 16), false},
		{"invalid utf8", strings.Repeat("x", 32) + "\xff", false},
		{"too long", strings.Repeat("x", 1025), false},
		{"api key prefix", "ask_" + strings.Repeat("x", 40), false},
		{"refresh prefix", "asr_" + strings.Repeat("x", 40), false},
		{"jwt-like", strings.Repeat("x", 20) + "." + strings.Repeat("y", 20) + ".z", false},
		{"one dot is fine", strings.Repeat("x", 20) + "." + strings.Repeat("y", 20), true},
		{"generated shape, bad checksum", tok[:len(tok)-6] + "000000", false},
		{"generated shape, typo", tok[:10] + string("ab"[boolInt(tok[10] == 'a')]) + tok[11:], false},
		{"aso_ prefix, other shape", "aso_" + strings.Repeat("x", 40) + "!", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateOperatorToken(c.tok)
			if (err == nil) != c.ok {
				t.Fatalf("ValidateOperatorToken = %v, want ok=%v", err, c.ok)
			}
			h, herr := testPepper.HashOperatorToken(c.tok)
			if (herr == nil) != c.ok {
				t.Fatalf("HashOperatorToken = %v, want ok=%v", herr, c.ok)
			}
			if c.ok && !VerifyOperatorToken(testPepper, c.tok, h) {
				t.Fatal("valid token does not verify")
			}
		})
	}
	if err := ValidateOperatorToken(tok[:len(tok)-6] + "000000"); !errors.Is(err, ErrOperatorTokenChecksum) || !errors.Is(err, ErrOperatorTokenInvalid) {
		t.Fatalf("bad checksum: %v", err)
	}
	h, _ := testPepper.HashOperatorToken(tok)
	if VerifyOperatorToken(testPepper, tok[:len(tok)-1]+"x", h) || VerifyOperatorToken(testPepper, tok+"x", h) ||
		VerifyOperatorToken(mustPepper(bytes.Repeat([]byte{7}, 32)), tok, h) || VerifyOperatorToken(testPepper, tok, KeyHash{}) ||
		VerifyOperatorToken(nil, tok, h) {
		t.Fatal("wrong token, pepper or hash verified")
	}
}

func TestClassifyCredential(t *testing.T) {
	apiKey, _, _ := NewAPIKey(nil)
	refresh, _, _ := NewRefreshFamily(nil)
	op, _ := NewOperatorToken(nil)
	cases := []struct {
		in   string
		want CredentialKind
	}{
		{"", CredentialUnknown},
		{strings.Repeat("a", MaxTokenBytes+1), CredentialUnknown},
		{apiKey, CredentialAPIKey},
		{refresh, CredentialRefresh},
		{"eyJhbGciOiJFZERTQSJ9.e30.c2ln", CredentialJWT},
		{op, CredentialOperator},
		{"some-long-bootstrap-token-from-the-env", CredentialOperator},
	}
	for _, c := range cases {
		if got := ClassifyCredential(c.in); got != c.want {
			t.Errorf("ClassifyCredential(%.30q) = %v, want %v", c.in, got, c.want)
		}
	}
}
