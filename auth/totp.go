package auth

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// TOTPAlgorithm is the HMAC hash of a TOTP configuration.
type TOTPAlgorithm string

const (
	TOTPSHA1   TOTPAlgorithm = "SHA1" // what every authenticator app supports
	TOTPSHA256 TOTPAlgorithm = "SHA256"
	TOTPSHA512 TOTPAlgorithm = "SHA512"
)

func (a TOTPAlgorithm) hash() (func() hash.Hash, int) {
	switch a {
	case TOTPSHA1:
		return sha1.New, 20
	case TOTPSHA256:
		return sha256.New, 32
	case TOTPSHA512:
		return sha512.New, 64
	}
	return nil, 0
}

// TOTP is an RFC 6238 configuration. The zero value is not valid: start from
// DefaultTOTP.
type TOTP struct {
	Algorithm TOTPAlgorithm
	Digits    int           // 6–8
	Period    time.Duration // whole seconds, ≥ 1 s
	Skew      int           // steps accepted either side of now, 0–10
}

// DefaultTOTP is HMAC-SHA1, 6 digits, 30-second steps, ±1 step.
var DefaultTOTP = TOTP{Algorithm: TOTPSHA1, Digits: 6, Period: 30 * time.Second, Skew: 1}

// ValidateConfig checks the configuration.
func (o TOTP) ValidateConfig() error {
	if f, _ := o.Algorithm.hash(); f == nil {
		return fmt.Errorf("%w: algorithm %q", ErrTOTPConfig, o.Algorithm)
	}
	if o.Digits < 6 || o.Digits > 8 {
		return fmt.Errorf("%w: digits must be 6-8", ErrTOTPConfig)
	}
	if o.Period < time.Second || o.Period%time.Second != 0 {
		return fmt.Errorf("%w: period must be whole seconds", ErrTOTPConfig)
	}
	if o.Skew < 0 || o.Skew > 10 {
		return fmt.Errorf("%w: skew must be 0-10 steps", ErrTOTPConfig)
	}
	return nil
}

// totpEncoding is RFC 4648 base32 without padding, as authenticator apps use.
var totpEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// GenerateSecret returns a new base32 secret (no padding) with randomness
// from r (crypto/rand.Reader when nil), as long as the algorithm's output
// (RFC 4226 §4: at least 128 bits; 160 recommended). The server stores it
// encrypted (KMS field encryption), generated before proposing.
func (o TOTP) GenerateSecret(r io.Reader) (string, error) {
	_, n := o.Algorithm.hash()
	if n == 0 {
		return "", fmt.Errorf("%w: algorithm %q", ErrTOTPConfig, o.Algorithm)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(randReader(r), b); err != nil {
		return "", fmt.Errorf("auth: reading randomness: %w", err)
	}
	return totpEncoding.EncodeToString(b), nil
}

// DecodeTOTPSecret decodes a base32 secret leniently as users type them:
// case-insensitive, spaces and '-' ignored, padding optional. It must hold at
// least 128 bits.
func DecodeTOTPSecret(secret string) ([]byte, error) {
	s := strings.ToUpper(strings.NewReplacer(" ", "", "-", "", "=", "").Replace(secret))
	if len(s) > 1024 {
		return nil, ErrTOTPSecret
	}
	key, err := totpEncoding.DecodeString(s)
	if err != nil || len(key) < 16 {
		return nil, ErrTOTPSecret
	}
	return key, nil
}

// ProvisioningURI returns the otpauth:// URI to show as a QR code:
//
//	otpauth://totp/<issuer>:<account>?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30
func (o TOTP) ProvisioningURI(secret, issuer, account string) (string, error) {
	if err := o.ValidateConfig(); err != nil {
		return "", err
	}
	if _, err := DecodeTOTPSecret(secret); err != nil {
		return "", err
	}
	if issuer == "" || account == "" || strings.Contains(issuer, ":") {
		return "", fmt.Errorf("%w: issuer (without ':') and account are required", ErrTOTPConfig)
	}
	q := url.Values{}
	q.Set("secret", strings.ToUpper(strings.TrimRight(strings.ReplaceAll(secret, " ", ""), "=")))
	q.Set("issuer", issuer)
	q.Set("algorithm", string(o.Algorithm))
	q.Set("digits", strconv.Itoa(o.Digits))
	q.Set("period", strconv.Itoa(int(o.Period/time.Second)))
	u := url.URL{Scheme: "otpauth", Host: "totp", Path: "/" + issuer + ":" + account, RawQuery: q.Encode()}
	return u.String(), nil
}

// step returns the RFC 6238 time-step counter of t.
func (o TOTP) step(t time.Time) (uint64, error) {
	if t.Unix() < 0 {
		return 0, fmt.Errorf("%w: time before the Unix epoch", ErrTOTPConfig)
	}
	return uint64(t.Unix()) / uint64(o.Period/time.Second), nil
}

// Code returns the code for time t (for tests and enrolment checks).
func (o TOTP) Code(secret string, t time.Time) (string, error) {
	if err := o.ValidateConfig(); err != nil {
		return "", err
	}
	key, err := DecodeTOTPSecret(secret)
	if err != nil {
		return "", err
	}
	step, err := o.step(t)
	if err != nil {
		return "", err
	}
	return string(o.hotp(hmac.New(o.hashFunc(), key), step, make([]byte, 0, 8))), nil
}

func (o TOTP) hashFunc() func() hash.Hash { f, _ := o.Algorithm.hash(); return f }

var pow10 = [...]uint32{1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000}

// hotp appends the RFC 4226 code for counter to dst, using mac (keyed).
func (o TOTP) hotp(mac hash.Hash, counter uint64, dst []byte) []byte {
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], counter)
	mac.Reset()
	mac.Write(msg[:])
	sum := mac.Sum(nil)
	off := sum[len(sum)-1] & 0x0f
	v := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	v %= pow10[o.Digits]
	s := strconv.AppendUint(nil, uint64(v), 10)
	for i := len(s); i < o.Digits; i++ {
		dst = append(dst, '0')
	}
	return append(dst, s...)
}

// Validate reports whether code is valid at now for secret, within ±Skew
// steps, for a step later than lastUsedStep (the step the server stored at the
// user's last successful TOTP login; 0 when none). On success it returns the
// matched step, which the server must store as the new lastUsedStep so the
// same code (or an earlier one) cannot be replayed.
//
// Every candidate step is computed and compared in constant time. Spaces in
// code are ignored. err is only for a malformed secret or configuration; a
// wrong, malformed or replayed code is ok == false.
func (o TOTP) Validate(secret, code string, now time.Time, lastUsedStep uint64) (step uint64, ok bool, err error) {
	if err := o.ValidateConfig(); err != nil {
		return 0, false, err
	}
	key, err := DecodeTOTPSecret(secret)
	if err != nil {
		return 0, false, err
	}
	cur, err := o.step(now)
	if err != nil {
		return 0, false, err
	}
	code = strings.ReplaceAll(code, " ", "")
	wellFormed := len(code) == o.Digits
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			wellFormed = false
		}
	}
	if !wellFormed {
		return 0, false, nil
	}
	mac := hmac.New(o.hashFunc(), key)
	buf := make([]byte, 0, 8)
	var matched uint64
	found := 0
	for d := -o.Skew; d <= o.Skew; d++ {
		if d < 0 && uint64(-d) > cur {
			continue
		}
		s := uint64(int64(cur) + int64(d))
		eq := subtle.ConstantTimeCompare(o.hotp(mac, s, buf[:0]), []byte(code))
		eq &= boolInt(s > lastUsedStep)
		// Keep the first (earliest) match, without branching on it.
		take := eq &^ found
		matched = uint64(take)*s + uint64(1-take)*matched
		found |= eq
	}
	if found == 0 {
		return 0, false, nil
	}
	return matched, true, nil
}
