package kms

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// handField builds a field ciphertext byte by byte from the layout in the
// format's documentation, independently of the package's builders.
func handField(name string, version uint32, wrapped, nonce, sealed []byte) []byte {
	var b []byte
	b = append(b, 0xA5, 0x01, 0x01, byte(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, version)
	b = binary.BigEndian.AppendUint16(b, uint16(len(wrapped)))
	b = append(b, wrapped...)
	b = append(b, nonce...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(sealed)))
	return append(b, sealed...)
}

func TestCiphertextLayout(t *testing.T) {
	wrapped := []byte("wrapped-data-key")
	nonce := bytes.Repeat([]byte{7}, 12)
	sealed := bytes.Repeat([]byte{9}, 21)
	raw := handField("pii", 3, wrapped, nonce, sealed)
	ct, err := ParseCiphertext(raw)
	if err != nil {
		t.Fatal(err)
	}
	if ct.Kind != KindField || ct.KeyName != "pii" || ct.KeyVersion != 3 || !bytes.Equal(ct.WrappedKey, wrapped) || !bytes.Equal(ct.Nonce, nonce) || !bytes.Equal(ct.Sealed, sealed) {
		t.Fatalf("parsed %+v", ct)
	}
	if want := raw[:len(raw)-len(sealed)]; !bytes.Equal(ct.header, want) {
		t.Fatal("associated-data prefix is not every byte before the sealed payload")
	}
	if !bytes.Equal(ct.Marshal(), raw) {
		t.Fatal("Marshal differs from the documented layout")
	}
	text := EncodeText(raw)
	if text != "asg:v1:"+base64.RawURLEncoding.EncodeToString(raw) {
		t.Fatalf("text form %q", text)
	}
	if back, err := DecodeText(text); err != nil || !bytes.Equal(back, raw) {
		t.Fatalf("DecodeText: %v", err)
	}
	// What EncryptField builds follows the same layout.
	hdr, err := fieldHeader("pii", 3, wrapped, len(sealed)-tagSize)
	if err != nil || !bytes.Equal(hdr, handField("pii", 3, wrapped, make([]byte, 12), sealed)[:len(hdr)]) {
		t.Fatalf("fieldHeader: %v", err)
	}

	secret := []byte{0xA5, 0x01, 0x02, 0x01, 'k', 0, 0, 0, 1, 0, 3, 'a', 'b', 'c'}
	st, err := ParseCiphertext(secret)
	if err != nil || st.Kind != KindSecret || st.KeyName != "k" || st.KeyVersion != 1 || string(st.WrappedKey) != "abc" {
		t.Fatalf("secret: %+v %v", st, err)
	}
	if built, _ := secretCiphertext("k", 1, []byte("abc")); !bytes.Equal(built, secret) {
		t.Fatal("secretCiphertext differs from the documented layout")
	}
}

func TestParseCiphertextRejects(t *testing.T) {
	good := handField("pii", 1, []byte("w"), make([]byte, 12), make([]byte, 16))
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"empty":              {nil, "truncated"},
		"bad magic":          {mod(func(b []byte) []byte { b[0] = 0xA4; return b }), "neither a binary ciphertext"},
		"future version":     {mod(func(b []byte) []byte { b[1] = 2; return b }), "format version 2"},
		"unknown kind":       {mod(func(b []byte) []byte { b[2] = 9; return b }), "unknown kind"},
		"zero name length":   {mod(func(b []byte) []byte { b[3] = 0; return b }), "key name length 0"},
		"long name length":   {mod(func(b []byte) []byte { b[3] = 130; return b }), "key name length 130"},
		"bad name character": {mod(func(b []byte) []byte { b[5] = '.'; return b }), "neither <name> nor"},
		"empty tenant":       {handField("/pii", 1, []byte("w"), make([]byte, 12), make([]byte, 16)), "neither <name> nor"},
		"empty short name":   {handField("acme/", 1, []byte("w"), make([]byte, 12), make([]byte, 16)), "neither <name> nor"},
		"upper-case tenant":  {handField("Acme/pii", 1, []byte("w"), make([]byte, 12), make([]byte, 16)), "neither <name> nor"},
		"two slashes":        {handField("acme/x/pii", 1, []byte("w"), make([]byte, 12), make([]byte, 16)), "neither <name> nor"},
		"long short name":    {handField("acme/"+strings.Repeat("k", 65), 1, []byte("w"), make([]byte, 12), make([]byte, 16)), "neither <name> nor"},
		"version zero":       {mod(func(b []byte) []byte { copy(b[7:], []byte{0, 0, 0, 0}); return b }), "key version 0"},
		"version too big":    {mod(func(b []byte) []byte { copy(b[7:], []byte{0x80, 0, 0, 0}); return b }), "out of range"},
		"empty wrapped":      {handField("pii", 1, nil, make([]byte, 12), make([]byte, 16)), "empty wrapped key"},
		"short sealed":       {handField("pii", 1, []byte("w"), make([]byte, 12), make([]byte, 15)), "shorter than the tag"},
		"trailing bytes":     {append(bytes.Clone(good), 0), "1 trailing bytes"},
		"secret trailing":    {[]byte{0xA5, 1, 2, 1, 'k', 0, 0, 0, 1, 0, 1, 'a', 'b'}, "trailing bytes"},
		"text bad base64":    {[]byte("asg:v1:!!!!"), "base64url"},
		"text newline":       {[]byte("asg:v1:" + base64.RawURLEncoding.EncodeToString(good)[:8] + "\n" + base64.RawURLEncoding.EncodeToString(good)[8:]), "base64url"},
		"text CR":            {[]byte("asg:v1:" + base64.RawURLEncoding.EncodeToString(good) + "\r"), "base64url"},
		"text padded":        {[]byte("asg:v1:" + base64.URLEncoding.EncodeToString(good)), "base64url"},
		"text other version": {[]byte("asg:v2:AAAA"), "text prefix not supported"},
		"text of text":       {[]byte("asg:v1:" + base64.RawURLEncoding.EncodeToString([]byte("asg:v1:x"))), "does not hold a binary"},
		"vault ciphertext":   {[]byte("vault:v1:abcd"), "neither a binary ciphertext"},
	}
	for name, c := range cases {
		_, err := ParseCiphertext(c.in)
		if !errors.Is(err, ErrMalformedCiphertext) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrMalformedCiphertext containing %q", name, err, c.want)
		}
	}
}

// FuzzParseCiphertext: the parser never panics, and what it accepts is
// canonical: re-encoding gives back the input (binary), or the binary form
// of the input (text), and satisfies every documented constraint.
func FuzzParseCiphertext(f *testing.F) {
	field := handField("pii", 2, []byte("vault:v2:abc="), bytes.Repeat([]byte{1}, 12), bytes.Repeat([]byte{2}, 40))
	secret, _ := secretCiphertext("signing-keys", 7, bytes.Repeat([]byte{3}, 60))
	tenantField := handField(strings.Repeat("t", 64)+"/"+strings.Repeat("k", 64), 1, []byte("w"), bytes.Repeat([]byte{1}, 12), bytes.Repeat([]byte{2}, 16))
	for _, seed := range [][]byte{field, secret, tenantField, []byte(EncodeText(field)), []byte(EncodeText(secret)), nil, {0xA5}, []byte("asg:v1:"), field[:20]} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ct, err := ParseCiphertext(in)
		if err != nil {
			if !errors.Is(err, ErrMalformedCiphertext) {
				t.Fatalf("error not ErrMalformedCiphertext: %v", err)
			}
			return
		}
		if tenant, short := SplitKeyName(ct.KeyName); ValidateKeyName(ct.KeyName) != nil || len(ct.KeyName) > MaxStoredKeyNameLen ||
			ValidateShortKeyName(short) != nil || tenant != "" && validateTenant(tenant) != nil || strings.Count(ct.KeyName, "/") > 1 ||
			ct.KeyVersion < 1 || len(ct.WrappedKey) == 0 || len(ct.WrappedKey) > maxWrapped {
			t.Fatalf("accepted out-of-spec ciphertext %+v", ct)
		}
		switch ct.Kind {
		case KindField:
			if len(ct.Nonce) != nonceSize || len(ct.Sealed) < tagSize {
				t.Fatalf("field ciphertext with nonce %d, sealed %d", len(ct.Nonce), len(ct.Sealed))
			}
		case KindSecret:
			if ct.Nonce != nil || ct.Sealed != nil {
				t.Fatal("secret with a payload")
			}
		default:
			t.Fatalf("kind %d accepted", ct.Kind)
		}
		bin := ct.Marshal()
		if len(in) > 0 && in[0] == ctMagic {
			if !bytes.Equal(bin, in) {
				t.Fatal("binary ciphertext is not canonical")
			}
		} else if EncodeText(bin) != string(in) {
			t.Fatal("text ciphertext is not canonical")
		}
		again, err := ParseCiphertext(bin)
		if err != nil || again.KeyName != ct.KeyName || again.KeyVersion != ct.KeyVersion || !bytes.Equal(again.WrappedKey, ct.WrappedKey) {
			t.Fatalf("re-parse: %v", err)
		}
	})
}

// FuzzDecryptField drives arbitrary bytes through the whole decryption path
// (parser, key record checks, data-key unwrap, AES-GCM) and Rewrap, on the
// local backend with a key of two versions, version 1 retired. Neither
// panics; every failure is one of the package's errors; and anything that
// decrypts is one of the values the seeds encrypted (no forgery: only a
// real ciphertext, in either form, opens).
func FuzzDecryptField(f *testing.F) {
	ctx := context.Background()
	// The fuzzing engine runs the seeds in worker processes: the root key and
	// the version keys must be the same in each, or no seed would decrypt
	// there and the AES-GCM paths would go unexplored.
	root := sha256.Sum256([]byte("FuzzDecryptField root key"))
	p, err := NewLocalProvider(root[:])
	if err != nil {
		f.Fatal(err)
	}
	kr, err := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{fixedLocal{p}}})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := kr.CreateKey(ctx, "pii", KeyOptions{}); err != nil {
		f.Fatal(err)
	}
	enc := NewEncryptor(kr, EncryptorConfig{})
	c := Context{Tenant: "acme", Field: "email"}
	known := map[string]bool{}
	var seeds [][]byte
	add := func(pt string, secret bool) {
		var ct []byte
		var err error
		if secret {
			ct, err = enc.EncryptSecret(ctx, "pii", []byte(pt), c)
		} else {
			ct, err = enc.EncryptField(ctx, "pii", []byte(pt), c)
		}
		if err != nil {
			f.Fatal(err)
		}
		known[pt] = true
		seeds = append(seeds, ct, []byte(EncodeText(ct)), ct[:len(ct)-1])
	}
	add("retired@acme.test", false)
	add("retired secret", true)
	if _, err := kr.RotateKey(ctx, "pii"); err != nil {
		f.Fatal(err)
	}
	add("ann@acme.test", false)
	add("", false)
	add("signing key seed", true)
	if _, err := kr.SetMinDecryptionVersion(ctx, "pii", 2); err != nil {
		f.Fatal(err)
	}
	delete(known, "retired@acme.test")
	delete(known, "retired secret")
	for _, s := range seeds {
		f.Add(s)
	}
	f.Add([]byte(nil))
	f.Add([]byte("asg:v1:"))
	sentinels := []error{ErrMalformedCiphertext, ErrDecrypt, ErrKeyNotFound, ErrKeyMismatch, ErrVersionRetired}
	if _, err := enc.DecryptField(ctx, "", seeds[len(seeds)-3], c); err != nil {
		f.Fatalf("seed does not decrypt: %v", err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		pt, err := enc.DecryptField(ctx, "", in, c)
		if err == nil && !known[string(pt)] {
			t.Fatalf("decrypted to %q, which no seed encrypted", pt)
		}
		out, rerr := enc.Rewrap(ctx, "pii", in, c)
		for _, e := range []error{err, rerr} {
			if e != nil && !slices.ContainsFunc(sentinels, func(s error) bool { return errors.Is(e, s) }) {
				t.Fatalf("unexpected error class: %v", e)
			}
		}
		if (err == nil) != (rerr == nil) {
			t.Fatalf("DecryptField and Rewrap disagree: %v / %v", err, rerr)
		}
		if rerr == nil {
			back, err := enc.DecryptField(ctx, "pii", out, c)
			if err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("rewrapped ciphertext: %q %v", back, err)
			}
		}
	})
}

// fixedLocal is the local provider with version keys derived from the key
// name and version instead of drawn at random (fuzzing only).
type fixedLocal struct{ *LocalProvider }

func (p fixedLocal) CreateVersion(_ context.Context, rec *KeyRecord, version int, _ KeyOptions) (KeyVersion, error) {
	key := sha256.Sum256([]byte(fmt.Sprintf("fuzz version key %s/%d", rec.Name, version)))
	n := sha256.Sum256([]byte(fmt.Sprintf("fuzz version nonce %s/%d", rec.Name, version)))
	nonce := append(make([]byte, 0, nonceSize+dataKeySize+tagSize), n[:nonceSize]...)
	return KeyVersion{Version: version, Material: p.root.Seal(nonce, nonce, key[:], rootAAD(rec.Name, version)), RootKeyID: p.rootID}, nil
}
