package auth

import (
	_ "embed"
	"strings"
	"sync"
	"unicode/utf8"
)

//go:generate go run ./internal/gencommonpw -o commonpasswords.txt

// commonPasswordsTxt is one lower-case password per line, all of at least 8
// characters (shorter ones fail the length rule anyway).
//
//go:embed commonpasswords.txt
var commonPasswordsTxt string

// commonPasswords is built on first use so processes that never check a
// password (edges) do not pay for the set.
var commonPasswords = sync.OnceValue(func() map[string]struct{} {
	set := make(map[string]struct{}, strings.Count(commonPasswordsTxt, "\n")+1)
	for line := range strings.Lines(commonPasswordsTxt) {
		if line = strings.TrimSpace(line); line != "" {
			set[line] = struct{}{}
		}
	}
	return set
})

// IsCommonPassword reports whether password (compared case-insensitively) is
// in the embedded list of passwords attackers try first.
func IsCommonPassword(password string) bool {
	_, ok := commonPasswords()[strings.ToLower(password)]
	return ok
}

// PasswordPolicy is the rule a new password must pass.
type PasswordPolicy struct {
	MinRunes int // at least this many characters (Unicode code points)
	MaxBytes int // at most this many bytes; bounds hashing work (≤ MaxPasswordBytes)
	// RejectCommon refuses passwords in the embedded common-password list.
	RejectCommon bool
}

// DefaultPasswordPolicy is DESIGN.md §4: at least 8 characters, at most
// 1024 bytes, not a common password.
var DefaultPasswordPolicy = PasswordPolicy{MinRunes: 8, MaxBytes: MaxPasswordBytes, RejectCommon: true}

// ValidatePassword applies DefaultPasswordPolicy.
func ValidatePassword(password string, userInputs ...string) error {
	return DefaultPasswordPolicy.Validate(password, userInputs...)
}

// Validate returns nil or one of ErrPasswordTooShort, ErrPasswordTooLong,
// ErrPasswordInvalidUTF8, ErrPasswordCommon, ErrPasswordMatchesUser.
// userInputs are values the password must not equal, case-insensitively
// (user name, e-mail, tenant id); empty ones are ignored.
func (p PasswordPolicy) Validate(password string, userInputs ...string) error {
	maxBytes := p.MaxBytes
	if maxBytes <= 0 || maxBytes > MaxPasswordBytes {
		maxBytes = MaxPasswordBytes
	}
	if len(password) > maxBytes {
		return ErrPasswordTooLong
	}
	if !utf8.ValidString(password) {
		return ErrPasswordInvalidUTF8
	}
	if utf8.RuneCountInString(password) < p.MinRunes {
		return ErrPasswordTooShort
	}
	if p.RejectCommon && IsCommonPassword(password) {
		return ErrPasswordCommon
	}
	for _, in := range userInputs {
		if in != "" && strings.EqualFold(password, in) {
			return ErrPasswordMatchesUser
		}
	}
	return nil
}
