package auth

import "errors"

// Password errors. The policy errors are safe to show to the user who chose
// the password; ErrPHCMalformed means a stored hash is corrupt and must be
// logged, never shown.
var (
	ErrPasswordTooShort    = errors.New("auth: password is too short")
	ErrPasswordTooLong     = errors.New("auth: password is too long")
	ErrPasswordCommon      = errors.New("auth: password is too common")
	ErrPasswordInvalidUTF8 = errors.New("auth: password is not valid UTF-8")
	ErrPasswordMatchesUser = errors.New("auth: password must not equal the user name, e-mail or tenant")
	ErrPHCMalformed        = errors.New("auth: malformed argon2id PHC string")
	ErrWeakParams          = errors.New("auth: argon2id parameters are below the minimum")
)

// Token verification errors. Every error returned by Verify matches
// ErrTokenInvalid with errors.Is, and also the more specific sentinel below
// that says why (expired, unknown key, ...). Map all of them to 401.
var (
	ErrTokenInvalid     = errors.New("auth: token is invalid")
	ErrTokenMalformed   = errors.New("auth: token is malformed")
	ErrTokenAlgorithm   = errors.New("auth: token algorithm is not allowed for this key")
	ErrTokenSignature   = errors.New("auth: token signature is invalid")
	ErrUnknownKey       = errors.New("auth: token signing key is unknown")
	ErrKeyRetired       = errors.New("auth: token signing key is retired")
	ErrTokenExpired     = errors.New("auth: token is expired")
	ErrTokenNotYetValid = errors.New("auth: token is not valid yet")
	ErrTokenAudience    = errors.New("auth: token audience is not accepted")
	ErrTokenIssuer      = errors.New("auth: token issuer is not accepted")
	ErrTokenClaims      = errors.New("auth: token claims are missing or invalid")
	ErrTokenUse         = errors.New("auth: token is not for this use (access vs refresh)")
)

// Opaque credential errors (API keys, refresh tokens, operator tokens).
// ErrAPIKeyChecksum matches ErrAPIKeyMalformed.
var (
	ErrAPIKeyMalformed             = errors.New("auth: malformed API key")
	ErrAPIKeyChecksum        error = &wrapped{msg: "auth: API key checksum mismatch", err: ErrAPIKeyMalformed}
	ErrRefreshMalformed            = errors.New("auth: malformed refresh token")
	ErrOperatorTokenInvalid        = errors.New("auth: operator token must be 32 to 1024 printable characters, without surrounding spaces or a reserved prefix")
	ErrOperatorTokenChecksum error = &wrapped{msg: "auth: operator token checksum mismatch", err: ErrOperatorTokenInvalid}
	ErrPepperTooShort              = errors.New("auth: pepper must be at least 32 bytes")
	ErrRecoveryCodeInvalid         = errors.New("auth: malformed recovery code")
)

// Key and configuration errors.
var (
	ErrSecretTooShort = errors.New("auth: HS256 secret must be at least 32 bytes")
	ErrInvalidKey     = errors.New("auth: invalid key")
	ErrTOTPSecret     = errors.New("auth: malformed TOTP secret")
	ErrTOTPConfig     = errors.New("auth: invalid TOTP configuration")
)

// wrapped is a constant error that also matches a broader sentinel.
type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }

// tokenError is what Verify returns: it matches ErrTokenInvalid and the
// specific reason. The detail never contains token bytes or claim values
// beyond a key id, so it is safe to log.
type tokenError struct {
	reason error
	detail string
}

func (e *tokenError) Error() string {
	if e.detail == "" {
		return e.reason.Error()
	}
	return e.reason.Error() + ": " + e.detail
}

func (e *tokenError) Unwrap() []error { return []error{e.reason, ErrTokenInvalid} }

func tokenErr(reason error, detail string) error {
	return &tokenError{reason: reason, detail: detail}
}
