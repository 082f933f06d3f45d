package auth

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// maxHeaderSegment bounds the base64 JOSE header (ours is ~70 characters).
const maxHeaderSegment = 512

// DefaultAccessTTL is the default lifetime of an access token (DESIGN.md §4).
const DefaultAccessTTL = 24 * time.Hour

// TokenUse distinguishes access tokens from refresh tokens (claim "typ").
// This package issues refresh tokens as opaque strings (see refresh.go), but
// a JWT with typ "refresh" is still never accepted as an access token.
type TokenUse string

const (
	TokenAccess  TokenUse = "access"
	TokenRefresh TokenUse = "refresh"
)

// Claims are the claims of an AllSource token. Times have one-second
// precision on the wire.
type Claims struct {
	Subject   string    // "sub": user id, API key id or operator id
	TenantID  string    // "tenant_id"
	Role      Role      // "role"
	Issuer    string    // "iss"
	Audience  []string  // "aud"
	IssuedAt  time.Time // "iat": required; compared with the user's tokens_valid_after
	NotBefore time.Time // "nbf": optional (zero = none)
	ExpiresAt time.Time // "exp": required
	ID        string    // "jti": required; the revocation handle
	Use       TokenUse  // "typ": access or refresh
	Family    string    // "fam": refresh family of the login, so logout can revoke it
}

// NewTokenID returns a random token id (jti): 16 bytes from r
// (crypto/rand.Reader when nil) as 32 hex characters. Make it before proposing.
func NewTokenID(r io.Reader) (string, error) { return randomHex(randReader(r), 16) }

// Validate checks what Mint requires: sub, tenant_id, a known role, iss, at
// least one non-empty aud, jti, a token use, iat set and exp after iat (and
// nbf, when set, not after exp).
func (c Claims) Validate() error {
	bad := func(why string) error { return fmt.Errorf("%w: %s", ErrTokenClaims, why) }
	switch {
	case c.Subject == "":
		return bad("missing sub")
	case c.TenantID == "":
		return bad("missing tenant_id")
	case !c.Role.Valid() && c.Role != RoleOperator:
		return bad("invalid role")
	case c.Issuer == "":
		return bad("missing iss")
	case len(c.Audience) == 0 || slices.Contains(c.Audience, ""):
		return bad("missing aud")
	case c.ID == "":
		return bad("missing jti")
	case c.Use != TokenAccess && c.Use != TokenRefresh:
		return bad("typ must be access or refresh")
	case c.IssuedAt.Unix() <= 0:
		return bad("missing iat")
	case c.ExpiresAt.Unix() <= c.IssuedAt.Unix():
		return bad("exp must be after iat")
	case !c.NotBefore.IsZero() && c.NotBefore.Unix() >= c.ExpiresAt.Unix():
		return bad("nbf must be before exp")
	}
	return nil
}

// numericDate is a JWT NumericDate in whole seconds; 0 means absent.
type numericDate int64

// maxNumericDate (year 5138) keeps every accepted date far from overflow.
const maxNumericDate = 1e11

func (d numericDate) MarshalJSON() ([]byte, error) { return strconv.AppendInt(nil, int64(d), 10), nil }

// UnmarshalJSON accepts a JSON number in (0, 1e11] (fractions are truncated,
// RFC 7519 allows them) and null; anything else is an error.
func (d *numericDate) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || math.IsNaN(f) || f <= 0 || f > maxNumericDate || b[0] == '"' {
		return errors.New("numeric date out of range")
	}
	*d = numericDate(f)
	return nil
}

func (d numericDate) time() time.Time {
	if d == 0 {
		return time.Time{}
	}
	return time.Unix(int64(d), 0).UTC()
}

func (d numericDate) jwt() (*jwt.NumericDate, error) {
	if d == 0 {
		return nil, nil
	}
	return jwt.NewNumericDate(d.time()), nil
}

func toNumericDate(t time.Time) numericDate {
	if t.IsZero() {
		return 0
	}
	return numericDate(t.Unix())
}

// audience is "aud": a string or an array of strings on the wire.
type audience []string

func (a audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

func (a *audience) UnmarshalJSON(b []byte) error {
	// Fast path for the usual single plain string (Unmarshal has already
	// validated the document, so b is a complete JSON value).
	if len(b) >= 2 && b[0] == '"' && bytes.IndexByte(b, '\\') < 0 && utf8.Valid(b) {
		*a = audience{string(b[1 : len(b)-1])}
		return nil
	}
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud must be a string or an array of strings")
	}
	*a = many
	return nil
}

// wireClaims is the JSON payload. It implements jwt.Claims so the jwt
// library can sign it.
type wireClaims struct {
	Sub      string      `json:"sub"`
	TenantID string      `json:"tenant_id"`
	Role     string      `json:"role"`
	Iss      string      `json:"iss"`
	Aud      audience    `json:"aud"`
	Iat      numericDate `json:"iat"`
	Nbf      numericDate `json:"nbf,omitempty"`
	Exp      numericDate `json:"exp"`
	Jti      string      `json:"jti"`
	Typ      TokenUse    `json:"typ"`
	Fam      string      `json:"fam,omitempty"`
}

func (w *wireClaims) GetExpirationTime() (*jwt.NumericDate, error) { return w.Exp.jwt() }
func (w *wireClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return w.Iat.jwt() }
func (w *wireClaims) GetNotBefore() (*jwt.NumericDate, error)      { return w.Nbf.jwt() }
func (w *wireClaims) GetIssuer() (string, error)                   { return w.Iss, nil }
func (w *wireClaims) GetSubject() (string, error)                  { return w.Sub, nil }
func (w *wireClaims) GetAudience() (jwt.ClaimStrings, error)       { return jwt.ClaimStrings(w.Aud), nil }

func (c Claims) wire() *wireClaims {
	return &wireClaims{
		Sub: c.Subject, TenantID: c.TenantID, Role: string(c.Role), Iss: c.Issuer,
		Aud: audience(c.Audience), Iat: toNumericDate(c.IssuedAt), Nbf: toNumericDate(c.NotBefore),
		Exp: toNumericDate(c.ExpiresAt), Jti: c.ID, Typ: c.Use, Fam: c.Family,
	}
}

func (w *wireClaims) claims() Claims {
	return Claims{
		Subject: w.Sub, TenantID: w.TenantID, Role: Role(w.Role), Issuer: w.Iss,
		Audience: []string(w.Aud), IssuedAt: w.Iat.time(), NotBefore: w.Nbf.time(),
		ExpiresAt: w.Exp.time(), ID: w.Jti, Use: w.Typ, Family: w.Fam,
	}
}

// Mint signs c with key, putting key.KID in the "kid" header. It does not
// read the clock: c carries iat/nbf/exp. Tokens are minted on API servers
// (never inside Apply: EdDSA signing is deterministic, but keys are not in
// the state machine unwrapped).
func Mint(c Claims, key *SigningKey) (string, error) {
	if key == nil {
		return "", fmt.Errorf("%w: nil signing key", ErrInvalidKey)
	}
	if err := c.Validate(); err != nil {
		return "", err
	}
	var (
		method jwt.SigningMethod
		k      any
	)
	switch key.Alg {
	case AlgEdDSA:
		if len(key.priv) != ed25519.PrivateKeySize {
			return "", fmt.Errorf("%w: no Ed25519 private key", ErrInvalidKey)
		}
		method, k = jwt.SigningMethodEdDSA, key.priv
	case AlgHS256:
		if len(key.secret) < MinPepperBytes {
			return "", ErrSecretTooShort
		}
		method, k = jwt.SigningMethodHS256, key.secret
	default:
		return "", fmt.Errorf("%w: unsupported alg %q", ErrInvalidKey, key.Alg)
	}
	t := jwt.NewWithClaims(method, c.wire())
	t.Header["kid"] = key.KID
	s, err := t.SignedString(k)
	if err != nil {
		return "", fmt.Errorf("auth: signing token: %w", err)
	}
	return s, nil
}

// Header is the part of a JOSE header that matters here.
type Header struct {
	Alg Alg
	KID string // "" when absent
	Typ string // "" or "JWT"
}

// rawHeader decodes the JOSE header. Members that would let a token choose
// its own key or change how it is processed are decoded only to be refused.
type rawHeader struct {
	Alg  string          `json:"alg"`
	KID  *string         `json:"kid"`
	Typ  string          `json:"typ"`
	Crit json.RawMessage `json:"crit"`
	B64  json.RawMessage `json:"b64"`
	JKU  json.RawMessage `json:"jku"`
	JWK  json.RawMessage `json:"jwk"`
	X5U  json.RawMessage `json:"x5u"`
	X5C  json.RawMessage `json:"x5c"`
}

// ParseUnverifiedHeader is the cheap front end of Verify: it rejects garbage
// before any cryptography or claims parsing. It checks the size, that there
// are exactly three non-empty segments of base64url characters, and decodes
// only the header: alg must be EdDSA or HS256 ("none" and everything else is
// ErrTokenAlgorithm); kid, when present, must be a ValidKID; typ must be
// absent or "JWT"; crit, b64, jku, jwk, x5u and x5c are refused. Nothing it
// returns is authenticated.
func ParseUnverifiedHeader(token string) (Header, error) {
	h, _, err := parseFront(token)
	return h, err
}

// parseFront returns the header and the positions of the two dots.
func parseFront(token string) (Header, [2]int, error) {
	dots, err := splitToken(token)
	if err != nil {
		return Header{}, dots, err
	}
	h, err := parseHeader(token[:dots[0]])
	return h, dots, err
}

// splitToken checks the size and that token is three non-empty segments of
// base64url characters, and returns the positions of the two dots.
func splitToken(token string) (dots [2]int, err error) {
	if len(token) == 0 || len(token) > MaxTokenBytes {
		return dots, tokenErr(ErrTokenMalformed, "empty or too long")
	}
	n := 0
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case c == '.':
			if n == 2 {
				return dots, tokenErr(ErrTokenMalformed, "more than three segments")
			}
			dots[n] = i
			n++
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return dots, tokenErr(ErrTokenMalformed, "not base64url")
		}
	}
	if n != 2 || dots[0] == 0 || dots[1] == dots[0]+1 || dots[1] == len(token)-1 {
		return dots, tokenErr(ErrTokenMalformed, "want three non-empty segments")
	}
	if dots[0] > maxHeaderSegment {
		return dots, tokenErr(ErrTokenMalformed, "header too long")
	}
	return dots, nil
}

// parseHeader decodes and checks the header segment.
func parseHeader(seg string) (Header, error) {
	hb, err := b64.DecodeString(seg)
	if err != nil || len(hb) == 0 || hb[0] != '{' {
		return Header{}, tokenErr(ErrTokenMalformed, "header is not a JSON object")
	}
	var rh rawHeader
	if err := json.Unmarshal(hb, &rh); err != nil {
		return Header{}, tokenErr(ErrTokenMalformed, "header is not a JSON object")
	}
	switch Alg(rh.Alg) {
	case AlgEdDSA, AlgHS256:
	default:
		return Header{}, tokenErr(ErrTokenAlgorithm, "alg must be EdDSA or HS256")
	}
	if rh.Crit != nil || rh.B64 != nil || rh.JKU != nil || rh.JWK != nil || rh.X5U != nil || rh.X5C != nil {
		return Header{}, tokenErr(ErrTokenMalformed, "unsupported header member (crit, b64, jku, jwk, x5u or x5c)")
	}
	if rh.Typ != "" && !strings.EqualFold(rh.Typ, "JWT") {
		return Header{}, tokenErr(ErrTokenMalformed, "typ must be JWT")
	}
	h := Header{Alg: Alg(rh.Alg), Typ: rh.Typ}
	if rh.KID != nil {
		if !ValidKID(*rh.KID) {
			return Header{}, tokenErr(ErrTokenMalformed, "invalid kid")
		}
		h.KID = *rh.KID
	}
	return h, nil
}

// b64 is strict: non-canonical encodings (stray trailing bits) are refused,
// so one token has exactly one spelling. It still skips '\r' and '\n', which
// parseFront has already refused; other callers use decodeB64.
var b64 = base64.RawURLEncoding.Strict()

// decodeB64 is b64.DecodeString refusing line breaks too.
func decodeB64(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("line break in base64url")
	}
	return b64.DecodeString(s)
}

// VerifyOptions say what Verify accepts. Issuer, Audience and Now are
// required: a verifier that checks no issuer or no time is a misconfiguration.
type VerifyOptions struct {
	Issuer   string        // "iss" must equal this
	Audience string        // "aud" must contain this
	Now      time.Time     // the verifier's clock; Verify never reads one
	Leeway   time.Duration // clock skew allowed on exp, nbf and iat (≥ 0)
	Use      TokenUse      // expected "typ"; zero means TokenAccess
}

// ErrVerifyOptions is returned for unusable VerifyOptions (a programming
// error, not a bad token).
var ErrVerifyOptions = errors.New("auth: VerifyOptions need Issuer, Audience, Now and a non-negative Leeway")

// Verify checks token strictly and returns its claims:
//
//   - the front end (ParseUnverifiedHeader) rejects malformed input and any
//     alg but EdDSA/HS256 before any cryptography;
//   - the key is the one named by kid (a token without kid is accepted only
//     when the set holds exactly one non-retired key); unknown kid →
//     ErrUnknownKey, retired → ErrKeyRetired;
//   - the header alg must equal the alg registered for that key, so an HS256
//     token can never be checked against an Ed25519 public key (algorithm
//     confusion) → ErrTokenAlgorithm;
//   - the signature is verified before the payload is decoded
//     → ErrTokenSignature;
//   - sub, tenant_id, a known role, jti, typ, iat and exp are required
//     → ErrTokenClaims; typ must be opts.Use → ErrTokenUse;
//   - iss and aud must match → ErrTokenIssuer, ErrTokenAudience;
//   - exp, nbf and iat are checked against opts.Now with opts.Leeway
//     → ErrTokenExpired, ErrTokenNotYetValid.
//
// Every token error also matches ErrTokenInvalid. Revocation (jti),
// tokens_valid_after (iat) and user/tenant status are the caller's checks.
func Verify(token string, ks *KeySet, opts VerifyOptions) (Claims, error) {
	if opts.Issuer == "" || opts.Audience == "" || opts.Now.IsZero() || opts.Leeway < 0 {
		return Claims{}, ErrVerifyOptions
	}
	if opts.Use == "" {
		opts.Use = TokenAccess
	}
	key, dots, err := selectKey(token, ks)
	if err != nil {
		return Claims{}, err
	}

	signed, sigSeg := token[:dots[1]], token[dots[1]+1:]
	switch key.alg {
	case AlgEdDSA:
		if len(sigSeg) != b64.EncodedLen(ed25519.SignatureSize) {
			return Claims{}, tokenErr(ErrTokenSignature, "wrong signature length")
		}
		sig, err := b64.DecodeString(sigSeg)
		if err != nil {
			return Claims{}, tokenErr(ErrTokenMalformed, "signature is not base64url")
		}
		if err := jwt.SigningMethodEdDSA.Verify(signed, sig, key.pub); err != nil {
			return Claims{}, tokenErr(ErrTokenSignature, "")
		}
	case AlgHS256:
		if len(sigSeg) != b64.EncodedLen(32) {
			return Claims{}, tokenErr(ErrTokenSignature, "wrong signature length")
		}
		var sig [32]byte
		if n, err := b64.Decode(sig[:], []byte(sigSeg)); err != nil || n != len(sig) {
			return Claims{}, tokenErr(ErrTokenMalformed, "signature is not base64url")
		}
		if !key.verifyHS256(signed, sig[:]) {
			return Claims{}, tokenErr(ErrTokenSignature, "")
		}
	default:
		return Claims{}, tokenErr(ErrTokenAlgorithm, "unsupported key alg")
	}

	payload, err := b64.DecodeString(token[dots[0]+1 : dots[1]])
	if err != nil || len(payload) == 0 || payload[0] != '{' {
		return Claims{}, tokenErr(ErrTokenMalformed, "payload is not a JSON object")
	}
	var w wireClaims
	if err := json.Unmarshal(payload, &w); err != nil {
		return Claims{}, tokenErr(ErrTokenMalformed, "payload is not valid claims JSON")
	}
	c := w.claims()
	if err := checkClaims(&w, opts); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// selectKey runs the front end and picks the verification key, enforcing
// kid, key state and the exact algorithm registered for the key.
func selectKey(token string, ks *KeySet) (*VerificationKey, [2]int, error) {
	dots, err := splitToken(token)
	if err != nil {
		return nil, dots, err
	}
	// Fast path: the exact header segment this cluster mints for a known
	// key decodes to {alg: key's alg, kid: key's kid, typ: JWT}; skip the
	// JSON. Any other spelling takes the full parse.
	if ks != nil {
		if key, ok := ks.byHeader[token[:dots[0]]]; ok {
			return key, dots, checkKey(key, key.alg)
		}
	}
	h, err := parseHeader(token[:dots[0]])
	if err != nil {
		return nil, dots, err
	}
	var key *VerificationKey
	if h.KID == "" {
		if ks == nil || ks.usable == nil {
			return nil, dots, tokenErr(ErrUnknownKey, "token has no kid and the key set does not hold exactly one key")
		}
		key = ks.usable
	} else {
		var ok bool
		if key, ok = ks.Lookup(h.KID); !ok {
			return nil, dots, tokenErr(ErrUnknownKey, "kid "+h.KID)
		}
	}
	return key, dots, checkKey(key, h.Alg)
}

// checkKey refuses retired keys and any algorithm but the key's own.
func checkKey(key *VerificationKey, alg Alg) error {
	if key.state == KeyRetired {
		return tokenErr(ErrKeyRetired, "kid "+key.kid)
	}
	if alg != key.alg {
		return tokenErr(ErrTokenAlgorithm, fmt.Sprintf("token alg %s, key %s is %s", alg, key.kid, key.alg))
	}
	return nil
}

func checkClaims(w *wireClaims, opts VerifyOptions) error {
	switch {
	case w.Sub == "":
		return tokenErr(ErrTokenClaims, "missing sub")
	case w.TenantID == "":
		return tokenErr(ErrTokenClaims, "missing tenant_id")
	case !Role(w.Role).Valid() && Role(w.Role) != RoleOperator:
		return tokenErr(ErrTokenClaims, "missing or unknown role")
	case w.Jti == "":
		return tokenErr(ErrTokenClaims, "missing jti")
	case w.Exp == 0:
		return tokenErr(ErrTokenClaims, "missing exp")
	case w.Iat == 0:
		return tokenErr(ErrTokenClaims, "missing iat")
	case w.Exp <= w.Iat:
		return tokenErr(ErrTokenClaims, "exp is not after iat")
	case w.Typ != opts.Use:
		return tokenErr(ErrTokenUse, "want "+string(opts.Use))
	case w.Iss != opts.Issuer:
		return tokenErr(ErrTokenIssuer, "")
	case !slices.Contains(w.Aud, opts.Audience):
		return tokenErr(ErrTokenAudience, "")
	}
	if !opts.Now.Before(w.Exp.time().Add(opts.Leeway)) {
		return tokenErr(ErrTokenExpired, "")
	}
	notBefore := opts.Now.Add(opts.Leeway)
	if w.Nbf != 0 && notBefore.Before(w.Nbf.time()) {
		return tokenErr(ErrTokenNotYetValid, "nbf is in the future")
	}
	if notBefore.Before(w.Iat.time()) {
		return tokenErr(ErrTokenNotYetValid, "iat is in the future")
	}
	return nil
}
