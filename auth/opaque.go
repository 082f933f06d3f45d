package auth

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
)

// Opaque credentials (API keys, refresh tokens, operator tokens) share one
// construction, after GitHub's token format:
//
//	<prefix>_<id>_<secret><checksum>
//
//	prefix    3 letters naming the kind: ask (API key), asr (refresh), aso (operator)
//	id        32 lower-case hex characters (16 random bytes): the lookup key,
//	          not secret; absent for operator tokens
//	secret    43 base62 characters, uniformly random: log2(62)·43 ≈ 256.03 bits
//	checksum  6 base62 characters: CRC-32 (IEEE) of everything before it
//
// The checksum lets ParseAPIKey reject mistyped or truncated keys without any
// lookup; it is not a security measure. No part contains '_' except the
// separators, and all of it is URL- and header-safe.
const (
	idHexLen      = 32
	secretLen     = 43
	checksumLen   = 6
	base62        = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	prefixLen     = 4                                                  // "ask_"
	idTokenLen    = prefixLen + idHexLen + 1 + secretLen + checksumLen // 86
	plainTokenLen = prefixLen + secretLen + checksumLen                // 53
)

// MaxTokenBytes is the largest bearer credential (of any kind) accepted at
// all; longer input is rejected before any decoding.
const MaxTokenBytes = 8192

// base62Index maps a byte to its base62 value, or 0xff.
var base62Index = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < len(base62); i++ {
		t[base62[i]] = byte(i)
	}
	return t
}()

func randReader(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

// randomBase62 returns n uniformly random base62 characters, by rejection
// sampling bytes (values ≥ 248 = 4·62 are dropped, so b%62 is unbiased).
// A source that keeps yielding only rejected bytes is broken: give up.
func randomBase62(r io.Reader, n int) (string, error) {
	r = randReader(r)
	out := make([]byte, 0, n)
	var buf [64]byte
	for round := 0; len(out) < n; round++ {
		if round > 4+n/16 {
			return "", fmt.Errorf("auth: randomness source yields no usable bytes")
		}
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return "", fmt.Errorf("auth: reading randomness: %w", err)
		}
		for _, b := range buf {
			if b < 248 && len(out) < n {
				out = append(out, base62[b%62])
			}
		}
	}
	return string(out), nil
}

// randomHex returns 2n lower-case hex characters from n random bytes.
func randomHex(r io.Reader, n int) (string, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("auth: reading randomness: %w", err)
	}
	return hex.EncodeToString(b), nil
}

var crcTable = crc32.MakeTable(crc32.IEEE)

// crc32String is crc32.ChecksumIEEE over a string without converting it to a
// []byte (which would allocate on the edge's per-request path).
func crc32String(s string) uint32 {
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc = crcTable[byte(crc)^s[i]] ^ (crc >> 8)
	}
	return ^crc
}

// appendChecksum appends the 6-character base62 CRC-32 of body.
func appendChecksum(dst []byte, body string) []byte {
	v := crc32String(body)
	var c [checksumLen]byte
	for i := checksumLen - 1; i >= 0; i-- {
		c[i] = base62[v%62]
		v /= 62
	}
	return append(dst, c[:]...)
}

// checksumOK reports whether the last 6 characters of s are the checksum of
// the rest. It does not allocate.
func checksumOK(s string) bool {
	if len(s) < checksumLen {
		return false
	}
	body, sum := s[:len(s)-checksumLen], s[len(s)-checksumLen:]
	var v uint64
	for i := 0; i < checksumLen; i++ {
		d := base62Index[sum[i]]
		if d == 0xff {
			return false
		}
		v = v*62 + uint64(d)
	}
	return v == uint64(crc32String(body))
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func isBase62(s string) bool {
	for i := 0; i < len(s); i++ {
		if base62Index[s[i]] == 0xff {
			return false
		}
	}
	return true
}

// newIDToken makes "<prefix>_<id>_<secret><checksum>". id is generated when
// empty. It returns the raw token and its id and secret.
func newIDToken(r io.Reader, prefix, id string) (raw, gotID, secret string, err error) {
	r = randReader(r)
	if id == "" {
		if id, err = randomHex(r, idHexLen/2); err != nil {
			return "", "", "", err
		}
	} else if len(id) != idHexLen || !isLowerHex(id) {
		return "", "", "", fmt.Errorf("auth: id must be %d lower-case hex characters", idHexLen)
	}
	if secret, err = randomBase62(r, secretLen); err != nil {
		return "", "", "", err
	}
	b := make([]byte, 0, idTokenLen)
	b = append(b, prefix...)
	b = append(b, id...)
	b = append(b, '_')
	b = append(b, secret...)
	b = appendChecksum(b, string(b))
	return string(b), id, secret, nil
}

type parseResult uint8

const (
	parsedOK parseResult = iota
	parsedMalformed
	parsedBadChecksum
)

// parseIDToken splits and checks "<prefix>_<id>_<secret><checksum>" without
// allocating; id and secret are substrings of raw.
func parseIDToken(raw, prefix string) (id, secret string, res parseResult) {
	if len(raw) != idTokenLen || raw[:prefixLen] != prefix || raw[prefixLen+idHexLen] != '_' {
		return "", "", parsedMalformed
	}
	id = raw[prefixLen : prefixLen+idHexLen]
	secret = raw[prefixLen+idHexLen+1 : idTokenLen-checksumLen]
	if !isLowerHex(id) || !isBase62(raw[prefixLen+idHexLen+1:]) {
		return "", "", parsedMalformed
	}
	if !checksumOK(raw) {
		return "", "", parsedBadChecksum
	}
	return id, secret, parsedOK
}
