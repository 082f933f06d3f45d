package kms

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// KeyRecord is the replicated description of one named key: which backend
// holds it, its versions (with whatever each backend needs to find or unwrap
// the version's material) and its policy. It contains no secret in the clear:
// local key material is wrapped by the root key, the other backends keep
// their material and the record only names it.
//
// Records are made by Keyring (outside the state machine, with the clock and
// randomness that needs) and persisted as they are through a KeyStore; see
// MarshalKeyRecord for the stored form.
type KeyRecord struct {
	Name    string `json:"name"`
	Backend string `json:"backend"`
	// Versions in ascending order; Versions[i].Version == i+1.
	Versions []KeyVersion `json:"versions"`
	// MinDecryptionVersion: ciphertexts made with an older version are
	// refused (ErrVersionRetired). 1 keeps every version usable.
	MinDecryptionVersion int `json:"min_decryption_version"`
	// RotationPeriod: when > 0, the key is due for rotation once its newest
	// version is that old (see DueForRotation).
	RotationPeriod time.Duration `json:"rotation_period,omitempty"`
	CreatedAt      time.Time     `json:"created_at"`
	UpdatedAt      time.Time     `json:"updated_at"`
	// Revision increases by one with every change; KeyStore.PutKey compares
	// and sets on it.
	Revision uint64 `json:"revision"`
}

// KeyVersion is one version of a named key.
type KeyVersion struct {
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	// Ref is the backend's name for the version's material: the AWS key
	// ARN, the Vault transit key name, the PKCS#11 CKA_ID (hex). Empty for
	// local keys.
	Ref string `json:"ref,omitempty"`
	// RefVersion is the backend's own version number where it has one (the
	// Vault transit key version).
	RefVersion int `json:"ref_version,omitempty"`
	// Material is the version's key, wrapped by the local root key
	// (local backend only).
	Material []byte `json:"material,omitempty"`
	// RootKeyID identifies the root key that wrapped Material.
	RootKeyID string `json:"root_key_id,omitempty"`
}

// KeyOptions are the choices made when a key is created.
type KeyOptions struct {
	// Backend names the provider ("local", "vault", "aws", "pkcs11"); empty
	// means the keyring's default.
	Backend string `json:"backend,omitempty"`
	// RotationPeriod enables scheduled rotation (0: manual only). At least
	// one hour when set.
	RotationPeriod time.Duration `json:"rotation_period,omitempty"`
	// BackendRef adopts existing backend material as version 1 instead of
	// creating it: a Vault transit key name (must be a derived aes256-gcm96
	// key), an AWS key id, ARN or alias, a PKCS#11 CKA_LABEL. Later versions
	// are always created by the provider.
	BackendRef string `json:"backend_ref,omitempty"`
}

// MinRotationPeriod is the smallest RotationPeriod accepted.
const MinRotationPeriod = time.Hour

// MaxKeyNameLen is the longest key name as a key's owner chooses it (the
// short name).
const MaxKeyNameLen = 64

// MaxTenantLen is the longest tenant id (the prefix of a tenant-owned key's
// stored name).
const MaxTenantLen = 64

// MaxStoredKeyNameLen is the longest stored key name: "<tenant>/<name>".
const MaxStoredKeyNameLen = MaxTenantLen + 1 + MaxKeyNameLen

// ValidateShortKeyName checks a key name as its owner chooses it: 1–64
// characters of [A-Za-z0-9_-]. The alphabet is the intersection of what every
// backend accepts in its own names (Vault key names, AWS aliases, PKCS#11
// labels).
func ValidateShortKeyName(name string) error {
	if len(name) == 0 || len(name) > MaxKeyNameLen {
		return fmt.Errorf("%w: key name must be 1-%d characters", ErrInvalidArgument, MaxKeyNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: key name may contain only letters, digits, '_' and '-'", ErrInvalidArgument)
		}
	}
	return nil
}

// ValidateKeyName checks a stored key name, the one records, ciphertexts and
// the keyring use: a global key's short name (ValidateShortKeyName), or a
// tenant-owned key's "<tenant>/<name>" with a tenant id of 1–64 characters of
// [a-z0-9_-]. Tenant keys are namespaced so that two tenants may each have a
// key "payments" and neither learns of the other's.
func ValidateKeyName(name string) error {
	tenant, short, qualified := strings.Cut(name, "/")
	if !qualified {
		return ValidateShortKeyName(name)
	}
	if err := validateTenant(tenant); err != nil {
		return err
	}
	return ValidateShortKeyName(short)
}

func validateTenant(t string) error {
	if len(t) == 0 || len(t) > MaxTenantLen {
		return fmt.Errorf("%w: a key name's tenant must be 1-%d characters", ErrInvalidArgument, MaxTenantLen)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: a key name's tenant may contain only a-z, 0-9, '_' and '-'", ErrInvalidArgument)
		}
	}
	return nil
}

// QualifyKeyName is the stored name of key name owned by tenant: name itself
// for a global key (tenant ""), else "<tenant>/<name>". It does not validate.
func QualifyKeyName(tenant, name string) string {
	if tenant == "" {
		return name
	}
	return tenant + "/" + name
}

// SplitKeyName splits a stored name into its tenant ("" for a global key) and
// short name.
func SplitKeyName(stored string) (tenant, name string) {
	if t, n, ok := strings.Cut(stored, "/"); ok {
		return t, n
	}
	return "", stored
}

// Latest is the newest version (the one new encryptions use).
func (r *KeyRecord) Latest() KeyVersion {
	return r.Versions[len(r.Versions)-1]
}

// LatestVersion is the number of the newest version.
func (r *KeyRecord) LatestVersion() int { return len(r.Versions) }

// Version returns version v, or false if the record has no such version.
func (r *KeyRecord) Version(v int) (KeyVersion, bool) {
	if v < 1 || v > len(r.Versions) {
		return KeyVersion{}, false
	}
	return r.Versions[v-1], true
}

// Clone returns a deep copy.
func (r *KeyRecord) Clone() *KeyRecord {
	c := *r
	c.Versions = make([]KeyVersion, len(r.Versions))
	for i, v := range r.Versions {
		v.Material = slices.Clone(v.Material)
		c.Versions[i] = v
	}
	return &c
}

// Validate checks the record's internal consistency.
func (r *KeyRecord) Validate() error {
	if err := ValidateKeyName(r.Name); err != nil {
		return err
	}
	if r.Backend == "" {
		return fmt.Errorf("%w: key %q has no backend", ErrInvalidArgument, r.Name)
	}
	if len(r.Versions) == 0 {
		return fmt.Errorf("%w: key %q has no versions", ErrInvalidArgument, r.Name)
	}
	for i, v := range r.Versions {
		if v.Version != i+1 {
			return fmt.Errorf("%w: key %q: versions out of order", ErrInvalidArgument, r.Name)
		}
	}
	if r.MinDecryptionVersion < 1 || r.MinDecryptionVersion > len(r.Versions) {
		return fmt.Errorf("%w: key %q: min_decryption_version %d outside 1..%d", ErrInvalidArgument, r.Name, r.MinDecryptionVersion, len(r.Versions))
	}
	if r.RotationPeriod != 0 && r.RotationPeriod < MinRotationPeriod {
		return fmt.Errorf("%w: key %q: rotation period below %s", ErrInvalidArgument, r.Name, MinRotationPeriod)
	}
	if r.Revision == 0 {
		return fmt.Errorf("%w: key %q: revision 0", ErrInvalidArgument, r.Name)
	}
	return nil
}

// NextRotation is when the key is due for scheduled rotation; the zero time
// when it has no rotation period.
func (r *KeyRecord) NextRotation() time.Time {
	if r.RotationPeriod <= 0 {
		return time.Time{}
	}
	return r.Latest().CreatedAt.Add(r.RotationPeriod)
}

// DueForRotation returns, sorted by name, the names of the keys whose
// rotation period has elapsed at now (their newest version is at least
// RotationPeriod old). It is a pure function: the server calls it on a timer
// (on the leader) with the records from its store and rotates what it names,
// e.g. with Keyring.RotateDue.
func DueForRotation(records []*KeyRecord, now time.Time) []string {
	var due []string
	for _, r := range records {
		if r == nil || r.RotationPeriod <= 0 || len(r.Versions) == 0 {
			continue
		}
		if !now.Before(r.NextRotation()) {
			due = append(due, r.Name)
		}
	}
	sort.Strings(due)
	return due
}

// keyRecordFormat is the stored form's version.
const keyRecordFormat = 1

type storedRecord struct {
	Format int `json:"format"`
	*KeyRecord
}

// MarshalKeyRecord encodes a record for storage: a JSON object with the
// fields of KeyRecord plus "format":1. Durations are nanoseconds, times
// RFC 3339, Material base64. The encoding is deterministic, so a state
// machine may store and compare the bytes as they are.
func MarshalKeyRecord(r *KeyRecord) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(storedRecord{Format: keyRecordFormat, KeyRecord: r})
}

// UnmarshalKeyRecord decodes and validates what MarshalKeyRecord made.
func UnmarshalKeyRecord(b []byte) (*KeyRecord, error) {
	s := storedRecord{KeyRecord: new(KeyRecord)}
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: key record: %v", ErrInvalidArgument, err)
	}
	if s.Format != keyRecordFormat {
		return nil, fmt.Errorf("%w: key record format %d not supported", ErrInvalidArgument, s.Format)
	}
	if err := s.KeyRecord.Validate(); err != nil {
		return nil, err
	}
	return s.KeyRecord, nil
}
