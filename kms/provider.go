package kms

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Provider is one KMS backend: it makes key material for the versions of
// named keys and wraps, unwraps and rewraps small blobs (data keys, secrets)
// with a given version. The Keyring decides which version to use and keeps
// the records; a provider never reads or writes the KeyStore.
//
// Every method that takes a Binding must bind the blob to it (AES-GCM
// associated data, Vault derivation context, AWS encryption context), so that
// unwrapping with another binding fails with ErrDecrypt. Implementations must
// be safe for concurrent use, map their failures to the package's sentinel
// errors, and never put plaintext or key material in an error.
type Provider interface {
	// Name is the backend name written into key records ("local", "vault", ...).
	Name() string

	// CreateVersion makes the material for version `version` of rec.Name
	// and returns what the record must hold to use it. For version 1 rec has
	// no versions yet and opts.BackendRef may name existing material to
	// adopt; for later versions rec is the current record (rotation).
	CreateVersion(ctx context.Context, rec *KeyRecord, version int, opts KeyOptions) (KeyVersion, error)

	// DiscardVersion undoes CreateVersion for a version that never made it
	// into the store (the compare-and-set lost a race). Best effort.
	DiscardVersion(ctx context.Context, rec *KeyRecord, v KeyVersion) error

	// Encrypt wraps plaintext (at most 4096 bytes) with version v.
	Encrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, plaintext []byte, b Binding) ([]byte, error)

	// Decrypt unwraps what Encrypt or GenerateDataKey made with version v.
	Decrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, wrapped []byte, b Binding) ([]byte, error)

	// GenerateDataKey returns a fresh random 256-bit key and its wrapping by
	// version v (the backend's native data-key call where it has one).
	GenerateDataKey(ctx context.Context, rec *KeyRecord, v KeyVersion, b Binding) (plaintext, wrapped []byte, err error)

	// Rewrap re-wraps a blob from version `from` to version `to` of the same
	// key without returning the plaintext (inside the backend where it can:
	// Vault rewrap, AWS ReEncrypt).
	Rewrap(ctx context.Context, rec *KeyRecord, from, to KeyVersion, wrapped []byte, b Binding) ([]byte, error)

	// ApplyPolicy pushes rec's policy (MinDecryptionVersion) to the backend
	// where the backend can enforce it too: Vault key config, disabling the
	// AWS keys of retired versions, clearing CKA_DECRYPT on retired PKCS#11
	// keys. The Keyring enforces the policy itself in any case.
	ApplyPolicy(ctx context.Context, rec *KeyRecord) error

	// Close releases connections and sessions.
	Close() error
}

// MaxSecretSize bounds what Provider.Encrypt and Encryptor.EncryptSecret
// accept (AWS KMS Encrypt's limit).
const MaxSecretSize = 4096

// ProviderFactory builds a provider from string settings (flags, env,
// config file). Each backend documents its keys; unknown keys are an error.
type ProviderFactory func(ctx context.Context, settings map[string]string) (Provider, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]ProviderFactory{}
)

// RegisterProvider makes a backend available to OpenProvider under name.
// The built-in backends register themselves: "local", "vault", "aws", and
// "pkcs11" when built with -tags pkcs11.
//
// This is the extension point for the backends the design lists but this
// package does not ship (no emulator exists to test them here): a GCP Cloud
// KMS or Azure Key Vault backend is a type implementing Provider (material
// per version: a CryptoKeyVersion name or a Key Vault key version id in
// KeyVersion.Ref; Encrypt/Decrypt with additional authenticated data =
// Binding.AAD(); Rewrap as decrypt + encrypt inside the backend call where
// the service allows; ApplyPolicy disabling retired versions), in a file
// that calls RegisterProvider("gcpkms", factory) or
// RegisterProvider("azurekv", factory) from an init function, behind a
// build tag if it brings heavy dependencies, and run through the same
// conformance suite (kms/conformance_test.go) against the real service.
//
// RegisterProvider panics if name is empty or taken.
func RegisterProvider(name string, f ProviderFactory) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if name == "" || f == nil {
		panic("kms: RegisterProvider with empty name or nil factory")
	}
	if _, dup := registry[name]; dup {
		panic("kms: provider " + name + " registered twice")
	}
	registry[name] = f
}

// RegisteredProviders lists the backend names OpenProvider accepts.
func RegisteredProviders() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// OpenProvider builds the named backend from settings. See the backend's
// constructor (NewLocalProvider via "local", NewVaultProvider via "vault",
// NewAWSProvider via "aws", NewPKCS11Provider via "pkcs11") for its keys.
func OpenProvider(ctx context.Context, name string, settings map[string]string) (Provider, error) {
	registryMu.RLock()
	f, ok := registry[name]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q (available: %s)", ErrUnknownBackend, name, strings.Join(RegisteredProviders(), ", "))
	}
	return f(ctx, settings)
}

// settingsReader reads typed values out of a settings map and remembers
// which keys were used, so unknown (misspelt) keys can be refused.
type settingsReader struct {
	backend string
	m       map[string]string
	used    map[string]bool
	err     error
}

func newSettings(backend string, m map[string]string) *settingsReader {
	return &settingsReader{backend: backend, m: m, used: map[string]bool{}}
}

func (s *settingsReader) str(key string) string {
	s.used[key] = true
	return s.m[key]
}

func (s *settingsReader) duration(key string) time.Duration {
	v := s.str(key)
	if v == "" || s.err != nil {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		s.err = fmt.Errorf("%w: %s setting %q: not a duration", ErrInvalidArgument, s.backend, key)
	}
	return d
}

func (s *settingsReader) integer(key string) int {
	v := s.str(key)
	if v == "" || s.err != nil {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		s.err = fmt.Errorf("%w: %s setting %q: not a non-negative integer", ErrInvalidArgument, s.backend, key)
	}
	return n
}

func (s *settingsReader) boolean(key string) bool {
	v := s.str(key)
	if v == "" || s.err != nil {
		return false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		s.err = fmt.Errorf("%w: %s setting %q: not a boolean", ErrInvalidArgument, s.backend, key)
	}
	return b
}

// done returns the first parse error, or an error naming unknown keys.
func (s *settingsReader) done() error {
	if s.err != nil {
		return s.err
	}
	var unknown []string
	for k := range s.m {
		if !s.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("%w: unknown %s settings: %s", ErrInvalidArgument, s.backend, strings.Join(unknown, ", "))
	}
	return nil
}

// Checker is implemented by backends that live outside the process (vault,
// aws): Check makes one cheap authenticated call and reports whether the
// backend can be reached with our credentials (nil), or wraps
// ErrUnavailable or ErrPermissionDenied. Servers use it for their readiness
// report and to tell an operator at start that the KMS is out of reach.
type Checker interface {
	Check(ctx context.Context) error
}

// CheckProvider checks p if it implements Checker; in-process backends are
// always reachable.
func CheckProvider(ctx context.Context, p Provider) error {
	if c, ok := p.(Checker); ok {
		return c.Check(ctx)
	}
	return nil
}
