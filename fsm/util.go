package fsm

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// tkey joins a tenant id and a key with a NUL, which neither may contain, so a
// prefix scan over "tenant\x00" never reaches another tenant's records.
func tkey(tenant, k string) []byte {
	b := make([]byte, 0, len(tenant)+1+len(k))
	b = append(b, tenant...)
	b = append(b, 0)
	return append(b, k...)
}

func tprefix(tenant string) []byte { return append([]byte(tenant), 0) }

func getJSON(b *bolt.Bucket, key []byte, v any) bool {
	raw := b.Get(key)
	if raw == nil {
		return false
	}
	if err := json.Unmarshal(raw, v); err != nil {
		// The store only holds what Apply wrote; a record that does not decode
		// is corruption, and answering from it would be worse than stopping.
		panic(fmt.Sprintf("fsm: corrupt record %q: %v", key, err))
	}
	return true
}

func putJSON(b *bolt.Bucket, key []byte, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("fsm: encode record %q: %v", key, err))
	}
	if err := b.Put(key, raw); err != nil {
		panic(fmt.Sprintf("fsm: put %q: %v", key, err))
	}
}

func del(b *bolt.Bucket, key []byte) {
	if err := b.Delete(key); err != nil {
		panic(fmt.Sprintf("fsm: delete %q: %v", key, err))
	}
}

// now is the command's proposer time: Apply never reads a clock.
func (w *wtx) now() time.Time { return time.Unix(0, w.hdr.Time).UTC() }

var errTenantID = errors.New("tenant id must be 1-64 characters of a-z, 0-9, '_' and '-'")

// ValidTenantID checks a tenant id: 1–64 characters of [a-z0-9_-]. (A loop,
// not a regexp: every audit entry is checked on every replica.)
func ValidTenantID(id string) error {
	if len(id) < 1 || len(id) > 64 {
		return errTenantID
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return errTenantID
		}
	}
	return nil
}

// validName checks a free-text name field: bounded, printable, no NUL.
func validName(field, s string, max int) *Error {
	if len(s) > max {
		return errf(CodeInvalidArgument, "%s is longer than %d bytes", field, max)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return errf(CodeInvalidArgument, "%s contains control characters", field)
		}
	}
	return nil
}

func mustUnmarshal(k, v []byte, out any) {
	if err := json.Unmarshal(v, out); err != nil {
		panic(fmt.Sprintf("fsm: corrupt record %q: %v", k, err))
	}
}

// recordTenant reads the "tenant" field of a stored record.
func recordTenant(v []byte) string {
	var r struct {
		Tenant string `json:"tenant"`
	}
	_ = json.Unmarshal(v, &r)
	return r.Tenant
}

func itoa(n int) string { return strconv.Itoa(n) }
