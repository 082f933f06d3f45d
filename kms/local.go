package kms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
)

// RootKeySize is the size of the local backend's root key.
const RootKeySize = 32

// DefaultRootKeyEnv is the environment variable LocalRootKeyFromEnv reads by default.
const DefaultRootKeyEnv = "ALLSOURCE_KMS_ROOT_KEY"

// InitLocalRootKey generates a new random root key and writes it to path
// (created with mode 0600, never overwriting an existing file) as standard
// base64 followed by a newline. It returns the key.
//
// Every server of a cluster must load the same root key: the key versions
// in the replicated records are wrapped by it. Copy the file to each server
// by a secure channel, or provide the key through the environment.
func InitLocalRootKey(path string) ([]byte, error) {
	key := make([]byte, RootKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("kms: creating root key file: %w", err)
	}
	// O_CREATE honours the umask, which can only remove bits; make sure.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("kms: root key file permissions: %w", err)
	}
	_, werr := f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("kms: writing root key file: %w", err)
	}
	return key, nil
}

// LoadLocalRootKey reads a root key file written by InitLocalRootKey (or 32
// raw bytes). It refuses a file that is not a regular file or that grants
// any permission to group or others (like ssh does with private keys): a
// root key readable by another user is a root key that has leaked.
func LoadLocalRootKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kms: opening root key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kms: root key file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: root key file %s is not a regular file", ErrInvalidArgument, path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: root key file %s has mode %04o; it must not be accessible to group or others (chmod 600)", ErrInvalidArgument, path, perm)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1024))
	if err != nil {
		return nil, fmt.Errorf("kms: reading root key file: %w", err)
	}
	key, err := parseRootKey(data)
	clear(data)
	if err != nil {
		return nil, fmt.Errorf("root key file %s: %w", path, err)
	}
	return key, nil
}

// LoadOrInitLocalRootKey loads the root key at path, generating it first if
// the file does not exist (for `server -dev` and first starts).
func LoadOrInitLocalRootKey(path string) ([]byte, error) {
	key, err := LoadLocalRootKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = InitLocalRootKey(path)
		if errors.Is(err, fs.ErrExist) { // another process won the race
			return LoadLocalRootKey(path)
		}
	}
	return key, err
}

// LocalRootKeyFromEnv reads a base64 root key from the environment variable
// name (DefaultRootKeyEnv when empty).
func LocalRootKeyFromEnv(name string) ([]byte, error) {
	if name == "" {
		name = DefaultRootKeyEnv
	}
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return nil, fmt.Errorf("%w: environment variable %s is not set", ErrInvalidArgument, name)
	}
	key, err := parseRootKey([]byte(v))
	if err != nil {
		return nil, fmt.Errorf("environment variable %s: %w", name, err)
	}
	return key, nil
}

func parseRootKey(data []byte) ([]byte, error) {
	if len(data) == RootKeySize && !isBase64Text(data) {
		return bytes.Clone(data), nil
	}
	text := bytes.TrimSpace(data)
	key := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, err := base64.StdEncoding.Decode(key, text)
	if err != nil || n != RootKeySize {
		clear(key)
		return nil, fmt.Errorf("%w: root key must be %d bytes, base64-encoded", ErrInvalidArgument, RootKeySize)
	}
	return key[:n], nil
}

func isBase64Text(b []byte) bool {
	for _, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '=' || c == '\n' || c == '\r' || c == ' ') {
			return false
		}
	}
	return true
}

// RootKeyID is a short public identifier of a root key (HMAC-SHA-256 of a
// fixed label under the key, first 8 bytes, hex). It is stored with every
// local key version so a server started with the wrong root key says so
// instead of failing every decryption.
func RootKeyID(root []byte) string {
	m := hmac.New(sha256.New, root)
	m.Write([]byte("allsource-guard kms root key id v1"))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// LocalProvider is the "local" backend: each key version is a random
// 256-bit AES key, wrapped by the root key with AES-256-GCM and kept in the
// key record (so the replicated store carries it to every server); blobs are
// sealed with AES-256-GCM under the version key with Binding.AAD() as
// associated data: nonce (12) || ciphertext || tag (16).
//
// Registry settings ("local"): root_key_file (path; LoadLocalRootKey) or
// root_key_env (variable name; LocalRootKeyFromEnv); with neither,
// ALLSOURCE_KMS_ROOT_KEY is read.
type LocalProvider struct {
	root   cipher.AEAD
	rootID string
	keys   sync.Map // string(rootID|name|version|material) -> cipher.AEAD
}

// NewLocalProvider returns a local provider over a 32-byte root key.
func NewLocalProvider(rootKey []byte) (*LocalProvider, error) {
	if len(rootKey) != RootKeySize {
		return nil, fmt.Errorf("%w: root key must be %d bytes", ErrInvalidArgument, RootKeySize)
	}
	aead, err := newAEAD(rootKey)
	if err != nil {
		return nil, err
	}
	return &LocalProvider{root: aead, rootID: RootKeyID(rootKey)}, nil
}

func init() {
	RegisterProvider("local", func(ctx context.Context, settings map[string]string) (Provider, error) {
		s := newSettings("local", settings)
		file, env := s.str("root_key_file"), s.str("root_key_env")
		if err := s.done(); err != nil {
			return nil, err
		}
		var key []byte
		var err error
		if file != "" {
			key, err = LoadLocalRootKey(file)
		} else {
			key, err = LocalRootKeyFromEnv(env)
		}
		if err != nil {
			return nil, err
		}
		defer clear(key)
		return NewLocalProvider(key)
	})
}

// Name implements Provider.
func (p *LocalProvider) Name() string { return "local" }

// RootKeyID returns the identifier of the provider's root key.
func (p *LocalProvider) RootKeyID() string { return p.rootID }

func rootAAD(name string, version int) []byte {
	return []byte("asg-kms-local-root/v1\x00" + name + "\x00" + strconv.Itoa(version))
}

// CreateVersion implements Provider. BackendRef is not supported: local
// material exists only in records.
func (p *LocalProvider) CreateVersion(ctx context.Context, rec *KeyRecord, version int, opts KeyOptions) (KeyVersion, error) {
	if opts.BackendRef != "" {
		return KeyVersion{}, fmt.Errorf("%w: the local backend cannot adopt existing material", ErrInvalidArgument)
	}
	key := make([]byte, dataKeySize)
	if _, err := rand.Read(key); err != nil {
		return KeyVersion{}, err
	}
	defer clear(key)
	nonce := make([]byte, nonceSize, nonceSize+dataKeySize+tagSize)
	if _, err := rand.Read(nonce); err != nil {
		return KeyVersion{}, err
	}
	material := p.root.Seal(nonce, nonce, key, rootAAD(rec.Name, version))
	return KeyVersion{Version: version, Material: material, RootKeyID: p.rootID}, nil
}

// DiscardVersion implements Provider: nothing exists outside the record.
func (p *LocalProvider) DiscardVersion(ctx context.Context, rec *KeyRecord, v KeyVersion) error {
	return nil
}

func (p *LocalProvider) versionKey(rec *KeyRecord, v KeyVersion) (cipher.AEAD, error) {
	if v.RootKeyID != p.rootID {
		return nil, fmt.Errorf("%w: key %q version %d was wrapped by root key %s, this server has root key %s", ErrDecrypt, rec.Name, v.Version, v.RootKeyID, p.rootID)
	}
	id := p.rootID + "\x00" + rec.Name + "\x00" + strconv.Itoa(v.Version) + "\x00" + string(v.Material)
	if a, ok := p.keys.Load(id); ok {
		return a.(cipher.AEAD), nil
	}
	if len(v.Material) < nonceSize+tagSize {
		return nil, fmt.Errorf("%w: key %q version %d: wrapped material truncated", ErrDecrypt, rec.Name, v.Version)
	}
	key, err := p.root.Open(nil, v.Material[:nonceSize], v.Material[nonceSize:], rootAAD(rec.Name, v.Version))
	if err != nil {
		return nil, fmt.Errorf("%w: key %q version %d: wrapped material does not open under the root key", ErrDecrypt, rec.Name, v.Version)
	}
	block, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		return nil, fmt.Errorf("%w: key %q version %d: %v", ErrDecrypt, rec.Name, v.Version, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	p.keys.Store(id, aead)
	return aead, nil
}

// Encrypt implements Provider.
func (p *LocalProvider) Encrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, plaintext []byte, b Binding) ([]byte, error) {
	if len(plaintext) > MaxSecretSize {
		return nil, fmt.Errorf("%w: %d bytes is more than a provider wraps (%d)", ErrInvalidArgument, len(plaintext), MaxSecretSize)
	}
	aead, err := p.versionKey(rec, v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, nonceSize, nonceSize+len(plaintext)+tagSize)
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return aead.Seal(out, out, plaintext, b.AAD()), nil
}

// Decrypt implements Provider.
func (p *LocalProvider) Decrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	aead, err := p.versionKey(rec, v)
	if err != nil {
		return nil, err
	}
	if len(wrapped) < nonceSize+tagSize {
		return nil, fmt.Errorf("%w: key %q version %d: wrapped blob of %d bytes is too short", ErrDecrypt, rec.Name, v.Version, len(wrapped))
	}
	pt, err := aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], b.AAD())
	if err != nil {
		return nil, fmt.Errorf("%w: key %q version %d: authentication failed", ErrDecrypt, rec.Name, v.Version)
	}
	return pt, nil
}

// GenerateDataKey implements Provider.
func (p *LocalProvider) GenerateDataKey(ctx context.Context, rec *KeyRecord, v KeyVersion, b Binding) ([]byte, []byte, error) {
	dk := make([]byte, dataKeySize)
	if _, err := rand.Read(dk); err != nil {
		return nil, nil, err
	}
	w, err := p.Encrypt(ctx, rec, v, dk, b)
	if err != nil {
		clear(dk)
		return nil, nil, err
	}
	return dk, w, nil
}

// Rewrap implements Provider (in process: the version keys are here anyway).
func (p *LocalProvider) Rewrap(ctx context.Context, rec *KeyRecord, from, to KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	pt, err := p.Decrypt(ctx, rec, from, wrapped, b)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return p.Encrypt(ctx, rec, to, pt, b)
}

// ApplyPolicy implements Provider: the Keyring's check is the enforcement.
func (p *LocalProvider) ApplyPolicy(ctx context.Context, rec *KeyRecord) error { return nil }

// Close implements Provider.
func (p *LocalProvider) Close() error { return nil }
