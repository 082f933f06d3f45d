package auth

import (
	"crypto/subtle"
	"fmt"
	"io"
	"strings"
)

// Recovery codes are one-time MFA fallbacks: 16 characters of Crockford
// base32 (80 random bits), shown as "xxxx-xxxx-xxxx-xxxx". They are stored
// only as HMAC-SHA-256(pepper, "rc\x00" || normalised code); 80 bits plus the
// pepper put offline guessing out of reach, so no slow hash is needed.
const (
	recoveryChars    = 16
	recoveryAlphabet = "0123456789abcdefghjkmnpqrstvwxyz" // Crockford: no i, l, o, u
	// MaxRecoveryCodes bounds GenerateRecoveryCodes.
	MaxRecoveryCodes = 64
)

// GenerateRecoveryCodes returns n fresh codes from r (crypto/rand.Reader when
// nil). Show them once; store HashRecoveryCode of each.
func GenerateRecoveryCodes(r io.Reader, n int) ([]string, error) {
	if n < 1 || n > MaxRecoveryCodes {
		return nil, fmt.Errorf("auth: recovery code count must be 1-%d", MaxRecoveryCodes)
	}
	r = randReader(r)
	codes := make([]string, n)
	raw := make([]byte, recoveryChars)
	for i := range codes {
		if _, err := io.ReadFull(r, raw); err != nil {
			return nil, fmt.Errorf("auth: reading randomness: %w", err)
		}
		var b strings.Builder
		for j, v := range raw {
			if j > 0 && j%4 == 0 {
				b.WriteByte('-')
			}
			b.WriteByte(recoveryAlphabet[v&31]) // 256 is a multiple of 32: unbiased
		}
		codes[i] = b.String()
	}
	return codes, nil
}

// normaliseRecoveryCode lower-cases, drops '-' and spaces, and maps the
// Crockford look-alikes (o→0, i/l→1). It fails unless 16 alphabet characters
// remain.
func normaliseRecoveryCode(code string) (string, bool) {
	if len(code) > 64 {
		return "", false
	}
	out := make([]byte, 0, recoveryChars)
	for i := 0; i < len(code); i++ {
		c := code[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		switch c {
		case '-', ' ':
			continue
		case 'o':
			c = '0'
		case 'i', 'l':
			c = '1'
		}
		if strings.IndexByte(recoveryAlphabet, c) < 0 || len(out) == recoveryChars {
			return "", false
		}
		out = append(out, c)
	}
	return string(out), len(out) == recoveryChars
}

// HashRecoveryCode returns the value to store for code.
func (p *Pepper) HashRecoveryCode(code string) (KeyHash, error) {
	n, ok := normaliseRecoveryCode(code)
	if !ok {
		return KeyHash{}, ErrRecoveryCodeInvalid
	}
	return p.mac("rc\x00", n, "", ""), nil
}

// MatchRecoveryCode looks for code among the stored hashes of a user's unused
// codes, comparing against every one in constant time. On a match the
// server must delete stored[index] (codes are single-use).
func (p *Pepper) MatchRecoveryCode(code string, stored []KeyHash) (index int, ok bool) {
	h, err := p.HashRecoveryCode(code)
	if err != nil {
		return -1, false
	}
	index, found := -1, 0
	for i := range stored {
		eq := subtle.ConstantTimeCompare(h[:], stored[i][:]) & boolInt(!stored[i].IsZero())
		index = subtle.ConstantTimeSelect(eq&^found, i, index)
		found |= eq
	}
	return index, found == 1
}
