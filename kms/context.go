package kms

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Context says where a ciphertext belongs. It is not stored in the
// ciphertext: it is authenticated as associated data, so the caller must
// present the same Context to decrypt, and a ciphertext copied into another
// tenant or another field fails with ErrDecrypt.
//
// Tenant is the tenant id ("" for cluster-global data, e.g. signing keys);
// Field names the column or purpose ("email", "mfa_secret", "signing_key/<kid>").
type Context struct {
	Tenant string `json:"tenant"`
	Field  string `json:"field"`
}

// MaxContextLen bounds Tenant and Field (bytes each).
const MaxContextLen = 255

func (c Context) validate() error {
	if len(c.Tenant) > MaxContextLen || len(c.Field) > MaxContextLen {
		return fmt.Errorf("%w: context tenant and field must be at most %d bytes", ErrInvalidArgument, MaxContextLen)
	}
	if !utf8.ValidString(c.Tenant) || !utf8.ValidString(c.Field) {
		return fmt.Errorf("%w: context tenant and field must be UTF-8", ErrInvalidArgument)
	}
	return nil
}

// Purpose separates the two things a named key wraps, so that a wrapped data
// key lifted out of a field ciphertext cannot be replayed as a wrapped secret
// (which would hand its plaintext to the caller) and vice versa.
type Purpose byte

const (
	// PurposeDataKey: a per-object data key inside a field ciphertext.
	PurposeDataKey Purpose = 'd'
	// PurposeSecret: a small secret (or a data key handed to the caller)
	// wrapped directly by the backend.
	PurposeSecret Purpose = 's'
)

// Binding is what a provider binds a wrapped blob to: the named key, the
// purpose and the caller's Context. Providers pass AAD() to backends that take
// bytes (local and PKCS#11 AES-GCM associated data, Vault's derivation
// context) and Map() to those that take a string map (AWS encryption context).
// The key version is not part of it: every version has its own key material
// (its own derived key in Vault), and Vault's rewrap keeps one context across
// versions.
type Binding struct {
	Key     string
	Purpose Purpose
	Context Context
}

// AAD is the canonical byte encoding of the binding:
//
//	"asg-kms-bind/v1" 0x00 || purpose (1 byte) || lp(key) || lp(tenant) || lp(field)
//
// where lp(s) is the uvarint length of s followed by s. It is injective: two
// different bindings never encode to the same bytes.
func (b Binding) AAD() []byte {
	out := make([]byte, 0, 16+1+3+len(b.Key)+len(b.Context.Tenant)+len(b.Context.Field)+6)
	out = append(out, "asg-kms-bind/v1\x00"...)
	out = append(out, byte(b.Purpose))
	out = appendLP(out, b.Key)
	out = appendLP(out, b.Context.Tenant)
	out = appendLP(out, b.Context.Field)
	return out
}

// Map is the binding as an AWS-style encryption context. Empty tenant or
// field are omitted (the map keys differ, so the encoding stays unambiguous).
func (b Binding) Map() map[string]string {
	m := map[string]string{
		"asg:key":     b.Key,
		"asg:purpose": string(rune(b.Purpose)),
	}
	if b.Context.Tenant != "" {
		m["asg:tenant"] = b.Context.Tenant
	}
	if b.Context.Field != "" {
		m["asg:field"] = b.Context.Field
	}
	return m
}

// String is for logs: key, purpose and context, never material.
func (b Binding) String() string {
	return "key=" + strconv.Quote(b.Key) + " purpose=" + string(rune(b.Purpose)) +
		" tenant=" + strconv.Quote(b.Context.Tenant) + " field=" + strconv.Quote(b.Context.Field)
}

func appendLP(out []byte, s string) []byte {
	out = binary.AppendUvarint(out, uint64(len(s)))
	return append(out, s...)
}
