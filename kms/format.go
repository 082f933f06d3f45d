package kms

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
)

// Ciphertext format, version 1. Binary form (big-endian integers):
//
//	offset     size  field
//	0          1     magic 0xA5
//	1          1     format version 0x01
//	2          1     kind: 0x01 field ciphertext (envelope), 0x02 wrapped secret
//	3          1     n = length of the key name, 1..129
//	4          n     key name: a global key's [A-Za-z0-9_-]{1,64}, or a tenant
//	                 key's "<tenant>/<name>", tenant [a-z0-9_-]{1,64} (see
//	                 ValidateKeyName)
//	4+n        4     key version, uint32, 1..2^31-1
//	8+n        2     w = length of the wrapped key, uint16, >= 1
//	10+n       w     wrapped key: the backend's ciphertext of the 32-byte data
//	                 key (kind 0x01) or of the secret itself (kind 0x02)
//
//	kind 0x02 ends here. kind 0x01 goes on:
//	10+n+w     12    nonce (random, 96 bits)
//	22+n+w     4     m = length of the sealed payload, uint32, >= 16
//	26+n+w     m     AES-256-GCM ciphertext of the plaintext, then the 16-byte tag
//
// A ciphertext must end exactly where its lengths say; a shorter one is
// reported as truncated (ErrMalformedCiphertext) before any key is used.
//
// The AES-GCM associated data of a field ciphertext is every byte before
// the sealed payload, followed by the caller's Context:
//
//	bytes [0, 26+n+w)  ||  uvarint(len(tenant)) || tenant || uvarint(len(field)) || field
//
// so it binds the format, kind, key name and version, the wrapped data key,
// the nonce and the length, and the tenant and field. The wrapped key is
// itself bound by the backend to Binding{Key, PurposeDataKey, Context}
// (kind 0x01) or Binding{Key, PurposeSecret, Context} (kind 0x02).
//
// Text form: "asg:v1:" followed by the binary form in unpadded base64url
// (RFC 4648 §5). The "v1" repeats the format version byte. Every function
// that takes a ciphertext accepts either form: a binary ciphertext starts
// with 0xA5, a text one with 'a'.
const (
	ctMagic      = 0xA5
	ctVersion1   = 0x01
	KindField    = 0x01
	KindSecret   = 0x02
	TextPrefix   = "asg:v1:"
	nonceSize    = 12
	tagSize      = 16
	dataKeySize  = 32
	maxWrapped   = 0xFFFF
	headerMinLen = 4 + 1 + 4 + 2 + 1
)

// Ciphertext is a parsed ciphertext. The slices alias the input.
type Ciphertext struct {
	Kind       byte
	KeyName    string
	KeyVersion int
	// WrappedKey is the wrapped data key (KindField) or the wrapped secret
	// (KindSecret).
	WrappedKey []byte
	// Nonce and Sealed (ciphertext || tag) are set for KindField only.
	Nonce  []byte
	Sealed []byte
	// header is bytes [0, 10+n+w) of the binary form (KindField).
	header []byte
}

// ParseCiphertext parses a ciphertext in binary or text form. It checks
// structure only (no key is involved): the magic, format version, kind,
// key name alphabet and length, version >= 1, and every length. Any failure
// wraps ErrMalformedCiphertext and says what was wrong; it never panics.
func ParseCiphertext(in []byte) (*Ciphertext, error) {
	b := in
	if len(b) > 0 && b[0] != ctMagic {
		var err error
		if b, err = decodeText(b); err != nil {
			return nil, err
		}
	}
	if len(b) < headerMinLen {
		return nil, malformed("truncated: %d bytes, the header alone needs at least %d", len(b), headerMinLen)
	}
	if b[0] != ctMagic {
		return nil, malformed("bad magic byte")
	}
	if b[1] != ctVersion1 {
		return nil, malformed("format version %d not supported", b[1])
	}
	kind := b[2]
	if kind != KindField && kind != KindSecret {
		return nil, malformed("unknown kind %d", kind)
	}
	n := int(b[3])
	if n < 1 || n > MaxStoredKeyNameLen {
		return nil, malformed("key name length %d outside 1..%d", n, MaxStoredKeyNameLen)
	}
	off := 4
	if len(b) < off+n+4 {
		return nil, malformed("truncated in the key name or version")
	}
	name := string(b[off : off+n])
	if ValidateKeyName(name) != nil {
		return nil, malformed("key name is neither <name> nor <tenant>/<name> of the allowed characters")
	}
	off += n
	ver := binary.BigEndian.Uint32(b[off:])
	if ver < 1 || ver > 1<<31-1 {
		return nil, malformed("key version %d out of range", ver)
	}
	off += 4
	ct := &Ciphertext{Kind: kind, KeyName: name, KeyVersion: int(ver)}
	if len(b) < off+2 {
		return nil, malformed("truncated before the wrapped key length")
	}
	w := int(binary.BigEndian.Uint16(b[off:]))
	off += 2
	if w == 0 {
		return nil, malformed("empty wrapped key")
	}
	if len(b) < off+w {
		return nil, malformed("truncated in the wrapped key (%d of %d bytes)", len(b)-off, w)
	}
	ct.WrappedKey = b[off : off+w]
	off += w
	if kind == KindSecret {
		if len(b) != off {
			return nil, malformed("%d trailing bytes after the wrapped secret", len(b)-off)
		}
		return ct, nil
	}
	if len(b) < off+nonceSize+4 {
		return nil, malformed("truncated in the nonce or payload length")
	}
	ct.Nonce = b[off : off+nonceSize]
	off += nonceSize
	m := binary.BigEndian.Uint32(b[off:])
	off += 4
	ct.header = b[:off]
	if m < tagSize {
		return nil, malformed("sealed payload length %d is shorter than the tag", m)
	}
	if rest := uint64(len(b) - off); rest < uint64(m) {
		return nil, malformed("truncated in the sealed payload (%d of %d bytes)", rest, m)
	} else if rest > uint64(m) {
		return nil, malformed("%d trailing bytes after the sealed payload", rest-uint64(m))
	}
	ct.Sealed = b[off:]
	return ct, nil
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformedCiphertext}, args...)...)
}

func decodeText(b []byte) ([]byte, error) {
	if !bytes.HasPrefix(b, []byte(TextPrefix)) {
		if bytes.HasPrefix(b, []byte("asg:")) {
			return nil, malformed("text prefix not supported (want %q)", TextPrefix)
		}
		return nil, malformed("neither a binary ciphertext nor text starting with %q", TextPrefix)
	}
	body := b[len(TextPrefix):]
	// The decoder skips '\r' and '\n' anywhere in its input; the text form
	// admits only the base64url alphabet, so one ciphertext has one text form.
	for _, c := range body {
		if !isBase64URL(c) {
			return nil, malformed("text form is not unpadded base64url")
		}
	}
	out := make([]byte, base64.RawURLEncoding.DecodedLen(len(body)))
	n, err := base64.RawURLEncoding.Strict().Decode(out, body)
	if err != nil {
		return nil, malformed("text form is not unpadded base64url")
	}
	out = out[:n]
	if len(out) == 0 {
		return nil, malformed("truncated: nothing after %q", TextPrefix)
	}
	if out[0] != ctMagic {
		return nil, malformed("text form does not hold a binary ciphertext")
	}
	return out, nil
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// appendHeader appends magic, version, kind, key name, key version, and
// the wrapped key with its length.
func appendHeader(dst []byte, kind byte, name string, version int, wrapped []byte) []byte {
	dst = append(dst, ctMagic, ctVersion1, kind, byte(len(name)))
	dst = append(dst, name...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(version))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(wrapped)))
	return append(dst, wrapped...)
}

func checkWrapped(wrapped []byte) error {
	if len(wrapped) == 0 || len(wrapped) > maxWrapped {
		return fmt.Errorf("%w: wrapped key of %d bytes does not fit the format", ErrInvalidArgument, len(wrapped))
	}
	return nil
}

// fieldHeader builds bytes [0, 26+n+w) of a field ciphertext for a
// plaintext of ptLen bytes (the nonce is left zero for the caller to fill),
// with capacity for the sealed payload.
func fieldHeader(name string, version int, wrapped []byte, ptLen int) ([]byte, error) {
	if err := checkWrapped(wrapped); err != nil {
		return nil, err
	}
	if uint64(ptLen)+tagSize > 1<<32-1 {
		return nil, fmt.Errorf("%w: plaintext too large", ErrInvalidArgument)
	}
	out := make([]byte, 0, 26+len(name)+len(wrapped)+ptLen+tagSize)
	out = appendHeader(out, KindField, name, version, wrapped)
	out = append(out, make([]byte, nonceSize)...)
	return binary.BigEndian.AppendUint32(out, uint32(ptLen+tagSize)), nil
}

// secretCiphertext builds a KindSecret ciphertext.
func secretCiphertext(name string, version int, wrapped []byte) ([]byte, error) {
	if err := checkWrapped(wrapped); err != nil {
		return nil, err
	}
	return appendHeader(make([]byte, 0, 10+len(name)+len(wrapped)), KindSecret, name, version, wrapped), nil
}

// fieldAAD is the AES-GCM associated data of a field ciphertext.
func fieldAAD(header []byte, c Context) []byte {
	aad := make([]byte, 0, len(header)+len(c.Tenant)+len(c.Field)+4)
	aad = append(aad, header...)
	aad = appendLP(aad, c.Tenant)
	return appendLP(aad, c.Field)
}

// Marshal returns the binary form (a fresh slice).
func (c *Ciphertext) Marshal() []byte {
	out := appendHeader(nil, c.Kind, c.KeyName, c.KeyVersion, c.WrappedKey)
	if c.Kind == KindSecret {
		return out
	}
	out = append(out, c.Nonce...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(c.Sealed)))
	return append(out, c.Sealed...)
}

// EncodeText returns the text form of a binary ciphertext ("asg:v1:" + base64url).
// A ciphertext already in text form is returned as it is.
func EncodeText(ciphertext []byte) string {
	if len(ciphertext) > 0 && ciphertext[0] != ctMagic {
		return string(ciphertext)
	}
	return TextPrefix + base64.RawURLEncoding.EncodeToString(ciphertext)
}

// DecodeText returns the binary form of a ciphertext given in either form,
// after checking its structure (ParseCiphertext).
func DecodeText(s string) ([]byte, error) {
	ct, err := ParseCiphertext([]byte(s))
	if err != nil {
		return nil, err
	}
	return ct.Marshal(), nil
}
