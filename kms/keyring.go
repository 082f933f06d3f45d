package kms

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// KeyringConfig configures a Keyring.
type KeyringConfig struct {
	// Store persists the key records (required).
	Store KeyStore
	// Providers are the configured backends, by their Name (at least one).
	Providers []Provider
	// DefaultBackend is used when KeyOptions.Backend is empty; defaults to
	// the only provider when there is exactly one.
	DefaultBackend string
	// Clock stamps records (CreatedAt, UpdatedAt); defaults to time.Now.
	Clock func() time.Time
}

// Keyring manages named keys: creation, rotation, policy, scheduled
// rotation. It builds every record change outside the state machine (the
// provider makes the material, the clock stamps it) and persists it through
// the KeyStore's compare-and-set. It is safe for concurrent use.
type Keyring struct {
	store          KeyStore
	providers      map[string]Provider
	defaultBackend string
	now            func() time.Time
}

// NewKeyring checks cfg and returns a Keyring.
func NewKeyring(cfg KeyringConfig) (*Keyring, error) {
	if cfg.Store == nil {
		return nil, fmt.Errorf("%w: keyring needs a store", ErrInvalidArgument)
	}
	if len(cfg.Providers) == 0 {
		return nil, fmt.Errorf("%w: keyring needs at least one provider", ErrInvalidArgument)
	}
	k := &Keyring{store: cfg.Store, providers: map[string]Provider{}, defaultBackend: cfg.DefaultBackend, now: cfg.Clock}
	for _, p := range cfg.Providers {
		if p == nil {
			return nil, fmt.Errorf("%w: nil provider", ErrInvalidArgument)
		}
		if _, dup := k.providers[p.Name()]; dup {
			return nil, fmt.Errorf("%w: two providers named %q", ErrInvalidArgument, p.Name())
		}
		k.providers[p.Name()] = p
	}
	if k.defaultBackend == "" && len(cfg.Providers) == 1 {
		k.defaultBackend = cfg.Providers[0].Name()
	}
	if k.defaultBackend != "" {
		if _, ok := k.providers[k.defaultBackend]; !ok {
			return nil, fmt.Errorf("%w: default backend %q is not configured", ErrUnknownBackend, k.defaultBackend)
		}
	}
	if k.now == nil {
		k.now = time.Now
	}
	return k, nil
}

// Store returns the keyring's KeyStore.
func (k *Keyring) Store() KeyStore { return k.store }

// Backends lists the configured provider names.
func (k *Keyring) Backends() []string {
	names := make([]string, 0, len(k.providers))
	for n := range k.providers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Provider returns the configured provider with that name.
func (k *Keyring) Provider(name string) (Provider, error) {
	p, ok := k.providers[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q is not configured on this server", ErrUnknownBackend, name)
	}
	return p, nil
}

func (k *Keyring) stamp() time.Time { return k.now().UTC() }

// Key returns the record of a key (read-only: do not modify it).
func (k *Keyring) Key(ctx context.Context, name string) (*KeyRecord, error) {
	if err := ValidateKeyName(name); err != nil {
		return nil, err
	}
	return k.store.GetKey(ctx, name)
}

// ListKeys returns every key record, sorted by name.
func (k *Keyring) ListKeys(ctx context.Context) ([]*KeyRecord, error) {
	recs, err := k.store.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
	return recs, nil
}

// CreateKey creates a named key with one version in the chosen backend.
// Errors: ErrInvalidArgument, ErrUnknownBackend, ErrKeyExists, and the
// backend's (ErrUnavailable, ErrPermissionDenied, ErrKeyNotFound for a
// BackendRef that does not exist).
func (k *Keyring) CreateKey(ctx context.Context, name string, opts KeyOptions) (*KeyRecord, error) {
	if err := ValidateKeyName(name); err != nil {
		return nil, err
	}
	if opts.RotationPeriod < 0 || (opts.RotationPeriod > 0 && opts.RotationPeriod < MinRotationPeriod) {
		return nil, fmt.Errorf("%w: rotation period must be 0 or at least %s", ErrInvalidArgument, MinRotationPeriod)
	}
	backend := opts.Backend
	if backend == "" {
		backend = k.defaultBackend
	}
	if backend == "" {
		return nil, fmt.Errorf("%w: no backend given and no default configured", ErrInvalidArgument)
	}
	p, err := k.Provider(backend)
	if err != nil {
		return nil, err
	}
	if _, err := k.store.GetKey(ctx, name); err == nil {
		return nil, fmt.Errorf("%w: %q", ErrKeyExists, name)
	} else if !errors.Is(err, ErrKeyNotFound) {
		return nil, err
	}
	now := k.stamp()
	rec := &KeyRecord{
		Name:                 name,
		Backend:              backend,
		MinDecryptionVersion: 1,
		RotationPeriod:       opts.RotationPeriod,
		CreatedAt:            now,
		UpdatedAt:            now,
		Revision:             1,
	}
	kv, err := p.CreateVersion(ctx, rec, 1, opts)
	if err != nil {
		return nil, fmt.Errorf("create key %q in %s: %w", name, backend, err)
	}
	kv.Version, kv.CreatedAt = 1, now
	rec.Versions = []KeyVersion{kv}
	if err := k.store.PutKey(ctx, rec); err != nil {
		if opts.BackendRef == "" { // never destroy material we adopted
			_ = p.DiscardVersion(ctx, rec, kv)
		}
		return nil, err
	}
	return rec, nil
}

// RotateKey adds a new version to a key; new encryptions use it at once,
// older versions keep decrypting (down to MinDecryptionVersion). A
// concurrent change of the record fails with ErrConflict and the new
// version's material is discarded.
func (k *Keyring) RotateKey(ctx context.Context, name string) (*KeyRecord, error) {
	rec, _, err := k.rotate(ctx, name, time.Time{})
	return rec, err
}

// rotate rotates name; if dueAt is set it first re-checks, on the current
// record, that the key is still due at that time (another server may have
// rotated it since the caller listed the keys).
func (k *Keyring) rotate(ctx context.Context, name string, dueAt time.Time) (*KeyRecord, bool, error) {
	rec, err := k.Key(ctx, name)
	if err != nil {
		return nil, false, err
	}
	if !dueAt.IsZero() && len(DueForRotation([]*KeyRecord{rec}, dueAt)) == 0 {
		return rec, false, nil
	}
	p, err := k.Provider(rec.Backend)
	if err != nil {
		return nil, false, err
	}
	next := rec.LatestVersion() + 1
	kv, err := p.CreateVersion(ctx, rec, next, KeyOptions{})
	if err != nil {
		return nil, false, fmt.Errorf("rotate key %q in %s: %w", name, rec.Backend, err)
	}
	now := k.stamp()
	kv.Version, kv.CreatedAt = next, now
	nr := rec.Clone()
	nr.Versions = append(nr.Versions, kv)
	nr.UpdatedAt = now
	nr.Revision++
	if err := k.store.PutKey(ctx, nr); err != nil {
		_ = p.DiscardVersion(ctx, nr, kv)
		return nil, false, err
	}
	return nr, true, nil
}

// update applies change to the current record and stores it, retrying a few
// times on ErrConflict (the change is recomputed on the fresh record).
// change returns false when the record already says what the caller wants.
func (k *Keyring) update(ctx context.Context, name string, change func(*KeyRecord) (bool, error)) (*KeyRecord, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		rec, err := k.Key(ctx, name)
		if err != nil {
			return nil, err
		}
		nr := rec.Clone()
		changed, err := change(nr)
		if err != nil {
			return nil, err
		}
		if !changed {
			return rec, nil
		}
		nr.UpdatedAt = k.stamp()
		nr.Revision++
		err = k.store.PutKey(ctx, nr)
		if err == nil {
			return nr, nil
		}
		if !errors.Is(err, ErrConflict) {
			return nil, err
		}
		lastErr = err
	}
	return nil, lastErr
}

// SetMinDecryptionVersion retires (or, lowered again, reinstates) the
// versions below v: their ciphertexts fail with ErrVersionRetired. v must be
// between 1 and the newest version. The record is stored first (every
// server enforces it from there), then the policy is pushed to the backend;
// if that push fails the stored record is returned with the error, and
// calling again with the same v retries the push.
//
// Retiring is a policy, not erasure: the material is kept and lowering v
// makes old ciphertexts readable again. Rewrap what must survive before
// raising it.
func (k *Keyring) SetMinDecryptionVersion(ctx context.Context, name string, v int) (*KeyRecord, error) {
	rec, err := k.update(ctx, name, func(r *KeyRecord) (bool, error) {
		if v < 1 || v > r.LatestVersion() {
			return false, fmt.Errorf("%w: min_decryption_version %d outside 1..%d", ErrInvalidArgument, v, r.LatestVersion())
		}
		if r.MinDecryptionVersion == v {
			return false, nil
		}
		r.MinDecryptionVersion = v
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	p, err := k.Provider(rec.Backend)
	if err != nil {
		return rec, err
	}
	if err := p.ApplyPolicy(ctx, rec); err != nil {
		return rec, fmt.Errorf("key %q: min_decryption_version stored, but %s did not apply it: %w", name, rec.Backend, err)
	}
	return rec, nil
}

// SetRotationPeriod sets or (with 0) clears a key's rotation period.
func (k *Keyring) SetRotationPeriod(ctx context.Context, name string, d time.Duration) (*KeyRecord, error) {
	if d < 0 || (d > 0 && d < MinRotationPeriod) {
		return nil, fmt.Errorf("%w: rotation period must be 0 or at least %s", ErrInvalidArgument, MinRotationPeriod)
	}
	return k.update(ctx, name, func(r *KeyRecord) (bool, error) {
		if r.RotationPeriod == d {
			return false, nil
		}
		r.RotationPeriod = d
		return true, nil
	})
}

// DueForRotation names the keys whose rotation period has elapsed at now.
func (k *Keyring) DueForRotation(ctx context.Context, now time.Time) ([]string, error) {
	recs, err := k.store.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	return DueForRotation(recs, now), nil
}

// RotateDue rotates every key due at now and returns the names it rotated.
// A key that another server rotated in the meantime is skipped. Failures do
// not stop the others; they come back joined.
func (k *Keyring) RotateDue(ctx context.Context, now time.Time) ([]string, error) {
	due, err := k.DueForRotation(ctx, now)
	if err != nil {
		return nil, err
	}
	var rotated []string
	var errs []error
	for _, name := range due {
		_, did, err := k.rotate(ctx, name, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("scheduled rotation of %q: %w", name, err))
			continue
		}
		if did {
			rotated = append(rotated, name)
		}
	}
	return rotated, errors.Join(errs...)
}

// Close closes every provider.
func (k *Keyring) Close() error {
	var errs []error
	for _, p := range k.providers {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}
