package fsm

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/allsource/guard/auth"
)

// KMS keys (DESIGN.md §6). The state machine keeps, per named key, the
// record the kms package built (kms.MarshalKeyRecord bytes: versions, wrapped
// local material or backend references, policy) together with who owns it and
// which tenants may use it. It never imports kms and never calls a KMS: the
// record is made by the proposer, Apply only checks the compare-and-set on
// the revision, the owner's authority and the record's shape, and stores it.
//
// A key is owned by a tenant (its admins create and manage it) or global
// (Tenant "", the operator's); the operator may grant a key to other tenants,
// which may then use it (encrypt, decrypt, ...) but not manage it.
//
// Key names are namespaced by owner: a global key is stored under its short
// name ("payments"), a tenant's key under "<tenant>/<name>" ("acme/payments"),
// so two tenants may each create "payments" and neither learns that the other
// did (a cluster-wide name space made "name taken" an existence oracle across
// tenants). The stored name is what ciphertexts carry, so a ciphertext stays
// bound to its owner's key. Apply enforces the namespace when a key is
// created: a tenant key's prefix is its owner, a global name has no '/'. Only
// global keys are granted, and a tenant never has an own key and a granted
// global key of the same short name (either order is refused), so a tenant's
// short name always resolves to one key. A deleted tenant's keys pass to the
// operator under their stored names (FormerTenant records whose they were).

// KMSKey is one named key as stored.
type KMSKey struct {
	Name string `json:"name"`
	// Tenant owns the key; "" for a global key.
	Tenant string `json:"tenant,omitempty"`
	// Revision is the record's revision (compare-and-set).
	Revision uint64 `json:"revision"`
	// Record is the kms.MarshalKeyRecord encoding of the key record.
	Record []byte `json:"record"`
	// Grants lists the other tenants allowed to use the key, sorted.
	Grants []string `json:"grants,omitempty"`
	// FormerTenant is set when the owning tenant was deleted and the key
	// passed to the operator (its ciphertexts stay decryptable by the operator).
	FormerTenant string    `json:"former_tenant,omitempty"`
	CreatedBy    string    `json:"created_by,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// UsableBy reports whether tenant may use the key (owner or grantee). The
// empty tenant (the cluster) may use global keys only.
func (k *KMSKey) UsableBy(tenant string) bool {
	return k.Tenant == tenant || tenant != "" && slices.Contains(k.Grants, tenant)
}

// PutKMSKeyCmd stores a key record with the KeyStore's compare-and-set:
// Revision 1 creates the key if the name is free; a later revision replaces a
// stored record whose revision is Revision-1. Tenant names the owner on
// creation ("" = global, operator only) and must match the stored owner on
// updates.
type PutKMSKeyCmd struct {
	Name     string `json:"name"`
	Tenant   string `json:"tenant,omitempty"`
	Revision uint64 `json:"revision"`
	Record   []byte `json:"record"`
}

// GrantKMSKeyCmd lets tenant use key Name (or, with Revoke, stops it).
type GrantKMSKeyCmd struct {
	Name   string `json:"name"`
	Tenant string `json:"tenant"`
	Revoke bool   `json:"revoke,omitempty"`
}

// maxKMSRecord bounds a stored key record (a few hundred bytes per version).
const maxKMSRecord = 256 << 10

var kmsKeyNamePattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidKMSKeyName checks a key name: 1-64 characters of [A-Za-z0-9_-] (the
// kms package's rule; the name is written into ciphertexts).
func ValidKMSKeyName(name string) *Error {
	if !kmsKeyNamePattern.MatchString(name) {
		return errf(CodeInvalidArgument, "key name must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
	}
	return nil
}

// KMSStoredName is the stored name of key name owned by tenant ("" global):
// "<tenant>/<name>" or name.
func KMSStoredName(tenant, name string) string {
	if tenant == "" {
		return name
	}
	return tenant + "/" + name
}

// ValidKMSStoredName checks a stored key name: a short name, or
// "<tenant>/<name>" with a valid tenant id.
func ValidKMSStoredName(stored string) *Error {
	tenant, name, ok := strings.Cut(stored, "/")
	if !ok {
		return ValidKMSKeyName(stored)
	}
	if ValidTenantID(tenant) != nil {
		return errf(CodeInvalidArgument, "a tenant key's name is <tenant>/<name> with a valid tenant id")
	}
	return ValidKMSKeyName(name)
}

// validNewKMSKeyName checks the stored name of a key being created for
// owner: a global key's name has no '/', a tenant key's is "<owner>/<name>".
func validNewKMSKeyName(stored, owner string) *Error {
	if e := ValidKMSStoredName(stored); e != nil {
		return e
	}
	prefix, _, qualified := strings.Cut(stored, "/")
	switch {
	case owner == "" && qualified:
		return errf(CodeInvalidArgument, "a global key's name has no '/'")
	case owner != "" && (!qualified || prefix != owner):
		return errf(CodeInvalidArgument, "a key of tenant %q is named %q/<name>", owner, owner)
	}
	return nil
}

// kmsRecordShape is the part of a kms key record Apply reads to check the
// command against it and to describe the change in the audit log.
type kmsRecordShape struct {
	Format   int    `json:"format"`
	Name     string `json:"name"`
	Backend  string `json:"backend"`
	Versions []struct {
		Version int `json:"version"`
	} `json:"versions"`
	MinDecryptionVersion int    `json:"min_decryption_version"`
	RotationPeriod       int64  `json:"rotation_period"`
	Revision             uint64 `json:"revision"`
}

func parseKMSRecord(b []byte) (*kmsRecordShape, *Error) {
	var s kmsRecordShape
	if len(b) == 0 || len(b) > maxKMSRecord {
		return nil, errf(CodeInvalidArgument, "the key record is required (at most %d bytes)", maxKMSRecord)
	}
	if err := json.Unmarshal(b, &s); err != nil || s.Format != 1 {
		return nil, errf(CodeInvalidArgument, "the key record is not a format-1 kms key record")
	}
	if len(s.Versions) == 0 || s.Backend == "" {
		return nil, errf(CodeInvalidArgument, "the key record has no backend or no versions")
	}
	for i, v := range s.Versions {
		if v.Version != i+1 {
			return nil, errf(CodeInvalidArgument, "the key record's versions are out of order")
		}
	}
	if s.MinDecryptionVersion < 1 || s.MinDecryptionVersion > len(s.Versions) || s.RotationPeriod < 0 {
		return nil, errf(CodeInvalidArgument, "the key record's policy is out of range")
	}
	return &s, nil
}

// mayManageKMSKey checks that p may create or change a key owned by tenant:
// the operator any key, a tenant admin its own tenant's keys.
func mayManageKMSKey(w *wtx, p Principal, tenant string) *Error {
	if tenant == "" {
		return requireOperator(p)
	}
	_, e := authorize(w, p, tenant, auth.PermAdmin)
	return e
}

func applyPutKMSKey(w *wtx, c *Command) (any, *Error) {
	var p PutKMSKeyCmd
	mustDecodePayload(c, &p)
	pr := c.Header.Principal
	if e := ValidKMSStoredName(p.Name); e != nil {
		return nil, e
	}
	if p.Tenant != "" {
		if err := ValidTenantID(p.Tenant); err != nil {
			return nil, errf(CodeInvalidArgument, "%v", err)
		}
	}
	// A new key's name is in its owner's name space (checked before the
	// store is read: a name outside it says nothing about other keys).
	if p.Revision == 1 {
		if e := validNewKMSKeyName(p.Name, p.Tenant); e != nil {
			return nil, e
		}
	}
	if p.Revision == 0 {
		return nil, errf(CodeInvalidArgument, "revision must be at least 1")
	}
	b := w.tx.Bucket(bKMSKeys)
	var cur KMSKey
	exists := getJSON(b, []byte(p.Name), &cur)
	// The caller's authority over the owner it names comes first; a key of
	// another owner is then a taken name (creation: only possible in a
	// tenant's own name space, for a key its deleted predecessor under the
	// same id left to the operator) or, for an update, not found.
	if e := mayManageKMSKey(w, pr, p.Tenant); e != nil {
		return nil, e
	}
	if exists && cur.Tenant != p.Tenant {
		switch {
		case p.Revision == 1:
			return nil, errf(CodeConflict, "key name %q is taken", p.Name)
		case !pr.IsOperator():
			return nil, errf(CodeNotFound, "key %q not found", p.Name)
		}
		return nil, errf(CodeConflict, "key %q belongs to another owner", p.Name)
	}
	rec, e := parseKMSRecord(p.Record)
	if e != nil {
		return nil, e
	}
	if rec.Name != p.Name || rec.Revision != p.Revision {
		return nil, errf(CodeInvalidArgument, "the key record does not match the command's name and revision")
	}
	now := w.now()
	switch {
	case !exists && p.Revision == 1:
		if len(rec.Versions) != 1 {
			return nil, errf(CodeInvalidArgument, "a new key has exactly one version")
		}
		if p.Tenant != "" {
			_, short, _ := strings.Cut(p.Name, "/")
			var g KMSKey
			if getJSON(b, []byte(short), &g) && g.Tenant == "" && slices.Contains(g.Grants, p.Tenant) {
				return nil, errf(CodeConflict, "key name %q is taken: a global key of that name is granted to tenant %q", short, p.Tenant)
			}
		}
		k := &KMSKey{Name: p.Name, Tenant: p.Tenant, Revision: 1, Record: p.Record, CreatedBy: pr.Name, CreatedAt: now, UpdatedAt: now}
		if k.CreatedBy == "" {
			k.CreatedBy = pr.ID
		}
		putJSON(b, []byte(p.Name), k)
		w.changed(ChangeKMSKey, p.Tenant, p.Name, false)
		w.audit(p.Tenant, ActionKMSKeyCreated, "kms-key/"+p.Name, OutcomeSuccess, map[string]string{
			"backend": rec.Backend, "version": "1", "rotation_period": time.Duration(rec.RotationPeriod).String()})
		return k, nil
	case exists && p.Revision == 1:
		return nil, errf(CodeConflict, "key %q exists", p.Name)
	case !exists:
		return nil, errf(CodeConflict, "key %q no longer exists", p.Name)
	case cur.Revision != p.Revision-1:
		return nil, errf(CodeConflict, "key %q is at revision %d, the update expected %d", p.Name, cur.Revision, p.Revision-1)
	}
	old, e := parseKMSRecord(cur.Record)
	if e != nil {
		return nil, errf(CodeFailedPrecondition, "the stored record of key %q does not decode", p.Name)
	}
	if rec.Backend != old.Backend {
		return nil, errf(CodeInvalidArgument, "a key cannot move to another backend")
	}
	added := len(rec.Versions) - len(old.Versions)
	if added < 0 || added > 1 {
		return nil, errf(CodeInvalidArgument, "an update keeps every version and adds at most one")
	}
	cur.Revision, cur.Record, cur.UpdatedAt = p.Revision, p.Record, now
	putJSON(b, []byte(p.Name), &cur)
	w.changed(ChangeKMSKey, cur.Tenant, p.Name, false)
	if added == 1 {
		w.audit(cur.Tenant, ActionKMSKeyRotated, "kms-key/"+p.Name, OutcomeSuccess, map[string]string{
			"backend": rec.Backend, "version": strconv.Itoa(len(rec.Versions))})
	} else {
		w.audit(cur.Tenant, ActionConfigChanged, "kms-key/"+p.Name, OutcomeSuccess, map[string]string{
			"min_decryption_version": strconv.Itoa(rec.MinDecryptionVersion),
			"rotation_period":        time.Duration(rec.RotationPeriod).String()})
	}
	return &cur, nil
}

func applyGrantKMSKey(w *wtx, c *Command) (any, *Error) {
	var p GrantKMSKeyCmd
	mustDecodePayload(c, &p)
	if e := requireOperator(c.Header.Principal); e != nil {
		return nil, e
	}
	if e := ValidKMSStoredName(p.Name); e != nil {
		return nil, e
	}
	if err := ValidTenantID(p.Tenant); err != nil {
		return nil, errf(CodeInvalidArgument, "%v", err)
	}
	b := w.tx.Bucket(bKMSKeys)
	var k KMSKey
	if !getJSON(b, []byte(p.Name), &k) {
		return nil, errf(CodeNotFound, "key %q not found", p.Name)
	}
	if !p.Revoke && (k.Tenant != "" || strings.Contains(p.Name, "/")) {
		// A tenant key is its tenant's alone; a deleted tenant's key (now
		// the operator's) keeps its "<tenant>/" name, which no other tenant
		// can address.
		return nil, errf(CodeInvalidArgument, "only global keys are granted; key %q belongs to a tenant", p.Name)
	}
	if !p.Revoke && p.Tenant != k.Tenant {
		if getJSON(b, []byte(KMSStoredName(p.Tenant, p.Name)), new(KMSKey)) {
			return nil, errf(CodeConflict, "tenant %q has its own key %q", p.Tenant, p.Name)
		}
	}
	_, tenantExists := w.reader().Tenant(p.Tenant)
	if !tenantExists && !p.Revoke {
		return nil, errf(CodeNotFound, "tenant %q not found", p.Tenant)
	}
	if p.Tenant == k.Tenant {
		return nil, errf(CodeInvalidArgument, "tenant %q owns key %q", p.Tenant, p.Name)
	}
	i, has := slices.BinarySearch(k.Grants, p.Tenant)
	switch {
	case p.Revoke && !has, !p.Revoke && has:
		return &k, nil
	case p.Revoke:
		k.Grants = slices.Delete(k.Grants, i, i+1)
	default:
		k.Grants = slices.Insert(k.Grants, i, p.Tenant)
	}
	if len(k.Grants) == 0 {
		k.Grants = nil
	}
	k.UpdatedAt = w.now()
	putJSON(b, []byte(p.Name), &k)
	w.changed(ChangeKMSKey, k.Tenant, p.Name, false)
	action := ActionKMSKeyGranted
	if p.Revoke {
		action = ActionKMSKeyGrantRevoked
	}
	meta := map[string]string{"grantee": p.Tenant}
	w.audit("", action, "kms-key/"+p.Name, OutcomeSuccess, meta)
	if tenantExists {
		w.audit(p.Tenant, action, "kms-key/"+p.Name, OutcomeSuccess, meta)
	}
	return &k, nil
}

// releaseTenantKMSKeys runs when a tenant is deleted: its keys pass to the
// operator (so what they encrypted stays recoverable, and a tenant later
// created under the same id does not inherit them), and its grants end.
func releaseTenantKMSKeys(w *wtx, tenant string) {
	b := w.tx.Bucket(bKMSKeys)
	var changed []*KMSKey
	_ = b.ForEach(func(k, v []byte) error {
		var key KMSKey
		mustUnmarshal(k, v, &key)
		touched := false
		if key.Tenant == tenant {
			key.Tenant, key.FormerTenant, touched = "", tenant, true
		}
		if i, ok := slices.BinarySearch(key.Grants, tenant); ok {
			key.Grants, touched = slices.Delete(key.Grants, i, i+1), true
			if len(key.Grants) == 0 {
				key.Grants = nil
			}
		}
		if touched {
			changed = append(changed, &key)
		}
		return nil
	})
	for _, k := range changed {
		k.UpdatedAt = w.now()
		putJSON(b, []byte(k.Name), k)
		w.changed(ChangeKMSKey, k.Tenant, k.Name, false)
		if k.FormerTenant == tenant {
			w.audit("", ActionConfigChanged, "kms-key/"+k.Name, OutcomeSuccess, map[string]string{"owner": "operator", "former_tenant": tenant})
		}
	}
}

// KMSKey returns the key named name.
func (r *Reader) KMSKey(name string) (*KMSKey, bool) {
	var k KMSKey
	if !getJSON(r.tx.Bucket(bKMSKeys), []byte(name), &k) {
		return nil, false
	}
	return &k, true
}

// KMSKeys returns every key in name order.
func (r *Reader) KMSKeys() []*KMSKey {
	var out []*KMSKey
	_ = r.tx.Bucket(bKMSKeys).ForEach(func(k, v []byte) error {
		var key KMSKey
		mustUnmarshal(k, v, &key)
		out = append(out, &key)
		return nil
	})
	return out
}
