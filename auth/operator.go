package auth

import (
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

// OperatorTokenPrefix starts generated operator (bootstrap) tokens:
// aso_<43 base62 secret><6 base62 checksum>, 53 characters, ≈256 bits.
const OperatorTokenPrefix = "aso_"

// Operator token length bounds, in characters and bytes.
const (
	MinOperatorTokenChars = 32
	MaxOperatorTokenBytes = 1024
)

// NewOperatorToken generates the bootstrap operator credential of a new
// cluster (printed once; only HashOperatorToken's result is stored).
func NewOperatorToken(r io.Reader) (string, error) {
	secret, err := randomBase62(randReader(r), secretLen)
	if err != nil {
		return "", err
	}
	b := make([]byte, 0, plainTokenLen)
	b = append(b, OperatorTokenPrefix...)
	b = append(b, secret...)
	b = appendChecksum(b, string(b))
	return string(b), nil
}

// ValidateOperatorToken checks an operator token, generated or supplied from
// outside (ALLSOURCE_BOOTSTRAP_TOKEN): at least 32 characters, at most 1024
// bytes, valid UTF-8, printable (spaces allowed inside, not at either end),
// and not of a form that ClassifyCredential routes elsewhere (an "ask_"/"asr_"
// prefix, or two dots like a JWT) — such a token could never be presented.
// A token shaped like a generated one (aso_ and 49 base62 characters) must
// carry a valid checksum, so a mistyped generated token is refused without a
// lookup (ErrOperatorTokenChecksum, which matches ErrOperatorTokenInvalid).
func ValidateOperatorToken(tok string) error {
	if looksGeneratedOperator(tok) {
		if !checksumOK(tok) {
			return ErrOperatorTokenChecksum
		}
		return nil
	}
	if len(tok) > MaxOperatorTokenBytes || !utf8.ValidString(tok) ||
		utf8.RuneCountInString(tok) < MinOperatorTokenChars ||
		strings.TrimSpace(tok) != tok || ClassifyCredential(tok) != CredentialOperator {
		return ErrOperatorTokenInvalid
	}
	for _, r := range tok {
		if !unicode.IsPrint(r) {
			return ErrOperatorTokenInvalid
		}
	}
	return nil
}

func looksGeneratedOperator(tok string) bool {
	return len(tok) == plainTokenLen && strings.HasPrefix(tok, OperatorTokenPrefix) && isBase62(tok[prefixLen:])
}

// HashOperatorToken validates tok and returns
// HMAC-SHA-256(pepper, "aso\x00" || tok), the value to store.
func (p *Pepper) HashOperatorToken(tok string) (KeyHash, error) {
	if err := ValidateOperatorToken(tok); err != nil {
		return KeyHash{}, err
	}
	return p.mac("aso\x00", tok, "", ""), nil
}

// VerifyOperatorToken reports whether tok hashes to stored, in constant time
// (for tokens of valid length). A nil pepper or zero hash never verifies.
func VerifyOperatorToken(p *Pepper, tok string, stored KeyHash) bool {
	if p == nil || stored.IsZero() || len(tok) > MaxOperatorTokenBytes || len(tok) < MinOperatorTokenChars {
		return false
	}
	if looksGeneratedOperator(tok) && !checksumOK(tok) {
		return false
	}
	return p.equalMAC(stored, "aso\x00", tok, "", "")
}

// CredentialKind says how a bearer credential must be checked.
type CredentialKind uint8

const (
	CredentialUnknown  CredentialKind = iota // empty or too long
	CredentialAPIKey                         // "ask_…": ParseAPIKey, look up by id
	CredentialRefresh                        // "asr_…": only valid at the refresh endpoint
	CredentialJWT                            // three dot-separated segments: Verify
	CredentialOperator                       // anything else: VerifyOperatorToken
)

func (k CredentialKind) String() string {
	switch k {
	case CredentialAPIKey:
		return "api_key"
	case CredentialRefresh:
		return "refresh_token"
	case CredentialJWT:
		return "jwt"
	case CredentialOperator:
		return "operator_token"
	default:
		return "unknown"
	}
}

// ClassifyCredential routes a bearer credential by its form alone, cheaply
// and without allocating. It does not validate anything.
func ClassifyCredential(tok string) CredentialKind {
	switch {
	case tok == "" || len(tok) > MaxTokenBytes:
		return CredentialUnknown
	case strings.HasPrefix(tok, APIKeyPrefix):
		return CredentialAPIKey
	case strings.HasPrefix(tok, RefreshTokenPrefix):
		return CredentialRefresh
	case strings.Count(tok, ".") == 2:
		return CredentialJWT
	default:
		return CredentialOperator
	}
}
