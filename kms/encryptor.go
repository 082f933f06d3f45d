package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"golang.org/x/sync/singleflight"
)

// EncryptorConfig configures an Encryptor.
type EncryptorConfig struct {
	// Cache bounds the data-key cache (see CacheConfig).
	Cache CacheConfig
	// Clock drives cache expiry; defaults to time.Now. Tests inject one.
	Clock func() time.Time
	// Rand is the nonce source; defaults to crypto/rand.Reader.
	Rand io.Reader
}

// Encryptor does envelope and field-level encryption with the named keys of
// a Keyring: EncryptField seals a value with a data key that the key's
// newest version wraps; DecryptField, Rewrap and the batch variants take a
// ciphertext in binary or text form. It is safe for concurrent use.
type Encryptor struct {
	kr     *Keyring
	cache  *dekCache
	off    bool
	rand   io.Reader
	flight singleflight.Group
}

// NewEncryptor returns an Encryptor over kr.
func NewEncryptor(kr *Keyring, cfg EncryptorConfig) *Encryptor {
	now := cfg.Clock
	if now == nil {
		now = time.Now
	}
	r := cfg.Rand
	if r == nil {
		r = rand.Reader
	}
	return &Encryptor{kr: kr, cache: newDEKCache(cfg.Cache, now), off: cfg.Cache.Disabled, rand: r}
}

// Keyring returns the keyring the Encryptor uses.
func (e *Encryptor) Keyring() *Keyring { return e.kr }

// CacheStats reports the data-key cache's counters.
func (e *Encryptor) CacheStats() CacheStats { return e.cache.snapshot() }

// PurgeCache drops every cached data key, or only those of one key when
// name is not empty (e.g. after an incident; retirement and rotation need
// no purge, see CacheConfig).
func (e *Encryptor) PurgeCache(name string) { e.cache.purge(name) }

// DataKey is a fresh data key for the caller's own envelope encryption.
type DataKey struct {
	// Plaintext is the 256-bit key. Use it, then overwrite it.
	Plaintext []byte
	// Ciphertext is Plaintext wrapped by the key's newest version (binary
	// form, KindSecret); DecryptField with the same Context returns Plaintext.
	Ciphertext []byte
	KeyName    string
	KeyVersion int
}

// FieldInput is one item of a batch call: a plaintext (EncryptFields) or a
// ciphertext (DecryptFields, RewrapFields) and its Context.
type FieldInput struct {
	Data    []byte
	Context Context
}

// FieldResult is the outcome of one batch item.
type FieldResult struct {
	Data []byte
	Err  error
}

// EncryptField encrypts plaintext for (keyName, c) with the key's newest
// version and returns the binary ciphertext (EncodeText gives the text form).
func (e *Encryptor) EncryptField(ctx context.Context, keyName string, plaintext []byte, c Context) ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	rec, err := e.kr.Key(ctx, keyName)
	if err != nil {
		return nil, err
	}
	return e.encrypt(ctx, rec, plaintext, c)
}

func (e *Encryptor) encrypt(ctx context.Context, rec *KeyRecord, plaintext []byte, c Context) ([]byte, error) {
	kv := rec.Latest()
	aead, wrapped, err := e.encryptionKey(ctx, rec, kv, c)
	if err != nil {
		return nil, err
	}
	out, err := fieldHeader(rec.Name, kv.Version, wrapped, len(plaintext))
	if err != nil {
		return nil, err
	}
	nonce := out[len(out)-4-nonceSize : len(out)-4]
	if _, err := io.ReadFull(e.rand, nonce); err != nil {
		return nil, fmt.Errorf("kms: reading nonce: %w", err)
	}
	return aead.Seal(out, nonce, plaintext, fieldAAD(out, c)), nil
}

// DecryptField decrypts a field ciphertext (or a wrapped secret or data key)
// made for c. keyName, when not empty, must be the key the ciphertext names
// (ErrKeyMismatch otherwise). Errors: ErrMalformedCiphertext,
// ErrKeyNotFound, ErrVersionRetired, ErrDecrypt, the backend's.
func (e *Encryptor) DecryptField(ctx context.Context, keyName string, ciphertext []byte, c Context) ([]byte, error) {
	ct, rec, err := e.open(ctx, keyName, ciphertext, c)
	if err != nil {
		return nil, err
	}
	return e.decrypt(ctx, rec, ct, c)
}

// open parses ct and loads and checks its key record.
func (e *Encryptor) open(ctx context.Context, keyName string, ciphertext []byte, c Context) (*Ciphertext, *KeyRecord, error) {
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	ct, err := ParseCiphertext(ciphertext)
	if err != nil {
		return nil, nil, err
	}
	if keyName != "" && keyName != ct.KeyName {
		return nil, nil, fmt.Errorf("%w: ciphertext names key %q, not %q", ErrKeyMismatch, ct.KeyName, keyName)
	}
	rec, err := e.kr.Key(ctx, ct.KeyName)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := rec.Version(ct.KeyVersion); !ok {
		return nil, nil, fmt.Errorf("%w: key %q has no version %d (latest %d)", ErrKeyNotFound, rec.Name, ct.KeyVersion, rec.LatestVersion())
	}
	if ct.KeyVersion < rec.MinDecryptionVersion {
		return nil, nil, fmt.Errorf("%w: key %q version %d is below min_decryption_version %d", ErrVersionRetired, rec.Name, ct.KeyVersion, rec.MinDecryptionVersion)
	}
	return ct, rec, nil
}

func (e *Encryptor) decrypt(ctx context.Context, rec *KeyRecord, ct *Ciphertext, c Context) ([]byte, error) {
	kv, _ := rec.Version(ct.KeyVersion)
	if ct.Kind == KindSecret {
		p, err := e.kr.Provider(rec.Backend)
		if err != nil {
			return nil, err
		}
		return p.Decrypt(ctx, rec, kv, ct.WrappedKey, Binding{Key: rec.Name, Purpose: PurposeSecret, Context: c})
	}
	aead, err := e.decryptionKey(ctx, rec, kv, ct.WrappedKey, c)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, ct.Nonce, ct.Sealed, fieldAAD(ct.header, c))
	if err != nil {
		return nil, fmt.Errorf("%w: key %q version %d: authentication failed", ErrDecrypt, rec.Name, kv.Version)
	}
	return pt, nil
}

// Rewrap moves a ciphertext to its key's newest version without handing
// the plaintext to the caller. A field ciphertext is opened and sealed again
// inside this call under a data key of the newest version (the associated
// data binds the version, so the payload is re-sealed); a wrapped secret is
// rewrapped inside the backend (Vault rewrap, AWS ReEncrypt). A ciphertext
// already at the newest version is authenticated in the given context (as
// Vault's rewrap does: it decrypts first) and comes back as it was, so a
// forged, damaged or misplaced ciphertext fails with ErrDecrypt whatever its
// version. The result has the form (binary or text) of the input. Retired
// versions are refused (ErrVersionRetired), as Vault does.
func (e *Encryptor) Rewrap(ctx context.Context, keyName string, ciphertext []byte, c Context) ([]byte, error) {
	ct, rec, err := e.open(ctx, keyName, ciphertext, c)
	if err != nil {
		return nil, err
	}
	if ct.KeyVersion == rec.LatestVersion() {
		pt, err := e.decrypt(ctx, rec, ct, c)
		if err != nil {
			return nil, err
		}
		clear(pt)
		return append([]byte(nil), ciphertext...), nil
	}
	var out []byte
	if ct.Kind == KindSecret {
		p, err := e.kr.Provider(rec.Backend)
		if err != nil {
			return nil, err
		}
		from, _ := rec.Version(ct.KeyVersion)
		to := rec.Latest()
		w, err := p.Rewrap(ctx, rec, from, to, ct.WrappedKey, Binding{Key: rec.Name, Purpose: PurposeSecret, Context: c})
		if err != nil {
			return nil, err
		}
		if out, err = secretCiphertext(rec.Name, to.Version, w); err != nil {
			return nil, err
		}
	} else {
		pt, err := e.decrypt(ctx, rec, ct, c)
		if err != nil {
			return nil, err
		}
		out, err = e.encrypt(ctx, rec, pt, c)
		clear(pt)
		if err != nil {
			return nil, err
		}
	}
	if ciphertext[0] != ctMagic {
		return []byte(EncodeText(out)), nil
	}
	return out, nil
}

// GenerateDataKey returns a fresh 256-bit data key and its wrapping by the
// key's newest version (the backend's native data-key call), for callers
// that encrypt large objects themselves.
func (e *Encryptor) GenerateDataKey(ctx context.Context, keyName string, c Context) (*DataKey, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	rec, err := e.kr.Key(ctx, keyName)
	if err != nil {
		return nil, err
	}
	p, err := e.kr.Provider(rec.Backend)
	if err != nil {
		return nil, err
	}
	kv := rec.Latest()
	pt, wrapped, err := p.GenerateDataKey(ctx, rec, kv, Binding{Key: rec.Name, Purpose: PurposeSecret, Context: c})
	if err != nil {
		return nil, err
	}
	ct, err := secretCiphertext(rec.Name, kv.Version, wrapped)
	if err != nil {
		clear(pt)
		return nil, err
	}
	return &DataKey{Plaintext: pt, Ciphertext: ct, KeyName: rec.Name, KeyVersion: kv.Version}, nil
}

// EncryptSecret wraps a small secret (at most MaxSecretSize bytes, e.g. a
// signing private key) directly with the key's newest version, without a
// data key. DecryptField opens it, Rewrap rewraps it inside the backend.
func (e *Encryptor) EncryptSecret(ctx context.Context, keyName string, secret []byte, c Context) ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	if len(secret) == 0 || len(secret) > MaxSecretSize {
		return nil, fmt.Errorf("%w: a secret must be 1-%d bytes (use EncryptField for larger values)", ErrInvalidArgument, MaxSecretSize)
	}
	rec, err := e.kr.Key(ctx, keyName)
	if err != nil {
		return nil, err
	}
	p, err := e.kr.Provider(rec.Backend)
	if err != nil {
		return nil, err
	}
	kv := rec.Latest()
	w, err := p.Encrypt(ctx, rec, kv, secret, Binding{Key: rec.Name, Purpose: PurposeSecret, Context: c})
	if err != nil {
		return nil, err
	}
	return secretCiphertext(rec.Name, kv.Version, w)
}

// EncryptFields encrypts a batch under one key (one record read; items of
// the same Context share cached data keys). Results are in input order;
// each carries its own error.
func (e *Encryptor) EncryptFields(ctx context.Context, keyName string, items []FieldInput) []FieldResult {
	out := make([]FieldResult, len(items))
	rec, err := e.kr.Key(ctx, keyName)
	for i, it := range items {
		switch {
		case err != nil:
			out[i].Err = err
		case it.Context.validate() != nil:
			out[i].Err = it.Context.validate()
		default:
			out[i].Data, out[i].Err = e.encrypt(ctx, rec, it.Data, it.Context)
		}
	}
	return out
}

// DecryptFields decrypts a batch; keyName as in DecryptField.
func (e *Encryptor) DecryptFields(ctx context.Context, keyName string, items []FieldInput) []FieldResult {
	out := make([]FieldResult, len(items))
	for i, it := range items {
		out[i].Data, out[i].Err = e.DecryptField(ctx, keyName, it.Data, it.Context)
	}
	return out
}

// RewrapFields rewraps a batch; keyName as in DecryptField.
func (e *Encryptor) RewrapFields(ctx context.Context, keyName string, items []FieldInput) []FieldResult {
	out := make([]FieldResult, len(items))
	for i, it := range items {
		out[i].Data, out[i].Err = e.Rewrap(ctx, keyName, it.Data, it.Context)
	}
	return out
}

// ---- data keys and the cache ----

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != dataKeySize {
		return nil, fmt.Errorf("%w: data key has %d bytes, want %d", ErrDecrypt, len(key), dataKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func (k cacheKey) flightID() string {
	b := make([]byte, 0, 64+len(k.key)+len(k.tenant)+len(k.field))
	b = append(b, byte(k.op))
	b = appendLP(b, k.key)
	b = strconv.AppendInt(b, k.incarnation, 10)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(k.version), 10)
	b = append(b, '/')
	b = appendLP(b, k.tenant)
	b = appendLP(b, k.field)
	b = append(b, k.wrappedHash[:]...)
	return string(b)
}

type sharedKey struct {
	aead    cipher.AEAD
	wrapped []byte
}

// cached runs newKey through the cache: a live entry serves the call; on a
// miss one caller (per cache key) makes the key and caches it while
// concurrent callers wait and then take their uses from the new entry. The
// caller that makes the key re-checks the cache first, so one that missed
// just before another's key landed does not make a second one.
func (e *Encryptor) cached(ctx context.Context, k cacheKey, newKey func() (sharedKey, error)) (sharedKey, error) {
	mk := func() (sharedKey, error) {
		e.cache.countBackendCall()
		return newKey()
	}
	if e.off {
		return mk()
	}
	for attempt := 0; attempt < 3; attempt++ {
		if a, w, ok := e.cache.take(k, true); ok {
			return sharedKey{a, w}, nil
		}
		leader := false
		v, err, _ := e.flight.Do(k.flightID(), func() (any, error) {
			leader = true
			if a, w, ok := e.cache.take(k, false); ok {
				return sharedKey{a, w}, nil
			}
			sk, err := mk()
			if err != nil {
				return nil, err
			}
			e.cache.put(k, sk.aead, sk.wrapped, 1)
			return sk, nil
		})
		if leader {
			if err != nil {
				return sharedKey{}, err
			}
			return v.(sharedKey), nil
		}
		if err != nil && (ctx.Err() != nil || !(errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))) {
			return sharedKey{}, err // the leader's failure is ours too, unless only its context ended
		}
	}
	return mk() // the entry was used up by others meanwhile: a private key
}

func (e *Encryptor) encryptionKey(ctx context.Context, rec *KeyRecord, kv KeyVersion, c Context) (cipher.AEAD, []byte, error) {
	k := cacheKey{op: opEncrypt, key: rec.Name, incarnation: rec.CreatedAt.UnixNano(), version: kv.Version, tenant: c.Tenant, field: c.Field}
	sk, err := e.cached(ctx, k, func() (sharedKey, error) {
		p, err := e.kr.Provider(rec.Backend)
		if err != nil {
			return sharedKey{}, err
		}
		dk, wrapped, err := p.GenerateDataKey(ctx, rec, kv, Binding{Key: rec.Name, Purpose: PurposeDataKey, Context: c})
		if err != nil {
			return sharedKey{}, err
		}
		aead, err := newAEAD(dk)
		clear(dk)
		if err != nil {
			return sharedKey{}, err
		}
		// Also serve decryptions of what this key encrypts.
		if !e.off {
			dkey := k
			dkey.op, dkey.wrappedHash = opDecrypt, sha256.Sum256(wrapped)
			e.cache.put(dkey, aead, nil, 0)
		}
		return sharedKey{aead, wrapped}, nil
	})
	return sk.aead, sk.wrapped, err
}

func (e *Encryptor) decryptionKey(ctx context.Context, rec *KeyRecord, kv KeyVersion, wrapped []byte, c Context) (cipher.AEAD, error) {
	k := cacheKey{op: opDecrypt, key: rec.Name, incarnation: rec.CreatedAt.UnixNano(), version: kv.Version, tenant: c.Tenant, field: c.Field}
	if !e.off {
		k.wrappedHash = sha256.Sum256(wrapped)
	}
	sk, err := e.cached(ctx, k, func() (sharedKey, error) {
		p, err := e.kr.Provider(rec.Backend)
		if err != nil {
			return sharedKey{}, err
		}
		dk, err := p.Decrypt(ctx, rec, kv, wrapped, Binding{Key: rec.Name, Purpose: PurposeDataKey, Context: c})
		if err != nil {
			return sharedKey{}, err
		}
		aead, err := newAEAD(dk)
		clear(dk)
		return sharedKey{aead: aead}, err
	})
	return sk.aead, err
}
