package kms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// VaultConfig configures the "vault" backend: HashiCorp Vault's transit
// secrets engine. Zero values fall back to the VAULT_* environment variables
// the Vault client reads (VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE,
// VAULT_CACERT, ...), then to the defaults noted.
type VaultConfig struct {
	Address   string // e.g. https://vault.internal:8200
	Token     string // X-Vault-Token
	Namespace string // Vault Enterprise namespace (X-Vault-Namespace)
	// MountPath of the transit engine (default "transit").
	MountPath string
	// KeyPrefix is prepended to our key names to form transit key names
	// (default "", so key "pii" is transit key "pii").
	KeyPrefix string

	CACert        string // PEM file of the CA that signed Vault's certificate
	CAPath        string // directory of PEM CA files
	ClientCert    string // PEM client certificate for mTLS
	ClientKey     string // PEM client key for mTLS
	TLSServerName string // SNI name
	TLSSkipVerify bool   // development only

	// Timeout bounds each HTTP request (default 10s).
	Timeout time.Duration
	// MaxRetries on connection errors, 5xx and 412 (0: default 2; negative:
	// none); RetryWaitMin and RetryWaitMax bound the backoff between tries
	// (defaults 250ms, 2s).
	MaxRetries   int
	RetryWaitMin time.Duration
	RetryWaitMax time.Duration
}

// VaultProvider is the "vault" backend. Each named key is one transit key
// (type aes256-gcm96, derived: true) whose versions map one to one to ours
// (KeyVersion.RefVersion holds Vault's number, KeyVersion.Ref the transit
// key name). Blobs are Vault ciphertexts ("vault:vN:<base64>") made with the
// derivation context Binding.AAD(), so each tenant/field/purpose gets its
// own derived key. Data keys come from transit/datakey/plaintext; Rewrap is
// transit/rewrap; min_decryption_version is pushed to transit/keys/:name/config.
//
// Registry settings ("vault"): address, token, token_file, namespace, mount,
// key_prefix, ca_cert, ca_path, client_cert, client_key, tls_server_name,
// tls_skip_verify, timeout, max_retries, retry_wait_min, retry_wait_max.
type VaultProvider struct {
	client *vault.Client
	mount  string
	prefix string
}

func init() {
	RegisterProvider("vault", func(ctx context.Context, settings map[string]string) (Provider, error) {
		s := newSettings("vault", settings)
		cfg := VaultConfig{
			Address: s.str("address"), Token: s.str("token"), Namespace: s.str("namespace"),
			MountPath: s.str("mount"), KeyPrefix: s.str("key_prefix"),
			CACert: s.str("ca_cert"), CAPath: s.str("ca_path"), ClientCert: s.str("client_cert"), ClientKey: s.str("client_key"),
			TLSServerName: s.str("tls_server_name"), TLSSkipVerify: s.boolean("tls_skip_verify"),
			Timeout: s.duration("timeout"), MaxRetries: s.integer("max_retries"),
			RetryWaitMin: s.duration("retry_wait_min"), RetryWaitMax: s.duration("retry_wait_max"),
		}
		tokenFile := s.str("token_file")
		if err := s.done(); err != nil {
			return nil, err
		}
		if settings["max_retries"] == "0" {
			cfg.MaxRetries = -1 // none
		}
		if tokenFile != "" {
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return nil, fmt.Errorf("vault token_file: %w", err)
			}
			cfg.Token = strings.TrimSpace(string(b))
		}
		return NewVaultProvider(cfg)
	})
}

// NewVaultProvider returns a Vault transit provider. It does not contact
// Vault (the first key operation does).
func NewVaultProvider(cfg VaultConfig) (*VaultProvider, error) {
	vc := vault.DefaultConfig() // reads VAULT_ADDR, VAULT_CACERT, ...
	if vc.Error != nil {
		return nil, fmt.Errorf("%w: vault environment: %v", ErrInvalidArgument, vc.Error)
	}
	if cfg.Address != "" {
		vc.Address = cfg.Address
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	vc.Timeout = cfg.Timeout
	switch {
	case cfg.MaxRetries == 0:
		vc.MaxRetries = 2
	case cfg.MaxRetries < 0:
		vc.MaxRetries = 0
	default:
		vc.MaxRetries = cfg.MaxRetries
	}
	vc.MinRetryWait, vc.MaxRetryWait = cfg.RetryWaitMin, cfg.RetryWaitMax
	if vc.MinRetryWait <= 0 {
		vc.MinRetryWait = 250 * time.Millisecond
	}
	if vc.MaxRetryWait < vc.MinRetryWait {
		vc.MaxRetryWait = max(2*time.Second, vc.MinRetryWait)
	}
	if cfg.CACert != "" || cfg.CAPath != "" || cfg.ClientCert != "" || cfg.ClientKey != "" || cfg.TLSServerName != "" || cfg.TLSSkipVerify {
		if err := vc.ConfigureTLS(&vault.TLSConfig{
			CACert: cfg.CACert, CAPath: cfg.CAPath, ClientCert: cfg.ClientCert, ClientKey: cfg.ClientKey,
			TLSServerName: cfg.TLSServerName, Insecure: cfg.TLSSkipVerify,
		}); err != nil {
			return nil, fmt.Errorf("%w: vault TLS: %v", ErrInvalidArgument, err)
		}
	}
	client, err := vault.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("%w: vault client: %v", ErrInvalidArgument, err)
	}
	if cfg.Token != "" {
		client.SetToken(cfg.Token)
	}
	if cfg.Namespace != "" {
		client.SetNamespace(cfg.Namespace)
	}
	mount := strings.Trim(cfg.MountPath, "/")
	if mount == "" {
		mount = "transit"
	}
	return &VaultProvider{client: client, mount: mount, prefix: cfg.KeyPrefix}, nil
}

// Name implements Provider.
func (p *VaultProvider) Name() string { return "vault" }

func (p *VaultProvider) path(parts ...string) string {
	return path.Join(append([]string{p.mount}, parts...)...)
}

// vaultKey is the part of GET transit/keys/:name we use.
type vaultKey struct {
	Type                 string `json:"type"`
	Derived              bool   `json:"derived"`
	LatestVersion        int    `json:"latest_version"`
	MinDecryptionVersion int    `json:"min_decryption_version"`
	SupportsEncryption   bool   `json:"supports_encryption"`
	SupportsDecryption   bool   `json:"supports_decryption"`
}

func (p *VaultProvider) readKey(ctx context.Context, name string) (*vaultKey, error) {
	sec, err := p.client.Logical().ReadWithContext(ctx, p.path("keys", name))
	if err != nil {
		return nil, p.mapErr(ctx, "read key", name, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fmt.Errorf("%w: vault transit key %q", ErrKeyNotFound, name)
	}
	var k vaultKey
	if err := decodeData(sec.Data, &k); err != nil {
		return nil, fmt.Errorf("vault: reading transit key %q: %w", name, err)
	}
	return &k, nil
}

// CreateVersion implements Provider: version 1 creates (or with BackendRef
// adopts) the transit key, later versions rotate it.
func (p *VaultProvider) CreateVersion(ctx context.Context, rec *KeyRecord, version int, opts KeyOptions) (KeyVersion, error) {
	// A tenant key's "<tenant>/<name>" becomes "<tenant>.<name>": transit
	// key names are one path segment ([\w.-]), and '.' is in neither a
	// tenant id nor a key name, so the mapping is one to one.
	name := p.prefix + strings.ReplaceAll(rec.Name, "/", ".")
	prev := 0
	if version == 1 {
		if opts.BackendRef != "" {
			name = opts.BackendRef
		} else {
			_, err := p.client.Logical().WriteWithContext(ctx, p.path("keys", name), map[string]any{
				"type": "aes256-gcm96", "derived": true,
			})
			if err != nil {
				return KeyVersion{}, p.mapErr(ctx, "create key", name, err)
			}
		}
	} else {
		last := rec.Latest()
		name, prev = last.Ref, last.RefVersion
		if _, err := p.client.Logical().WriteWithContext(ctx, p.path("keys", name, "rotate"), nil); err != nil {
			return KeyVersion{}, p.mapErr(ctx, "rotate key", name, err)
		}
	}
	k, err := p.readKey(ctx, name)
	if err != nil {
		return KeyVersion{}, err
	}
	if k.Type != "aes256-gcm96" || !k.Derived || !k.SupportsEncryption || !k.SupportsDecryption {
		return KeyVersion{}, fmt.Errorf("%w: vault transit key %q must be a derived aes256-gcm96 key (is type %q, derived %v)", ErrInvalidArgument, name, k.Type, k.Derived)
	}
	if k.LatestVersion <= prev {
		return KeyVersion{}, fmt.Errorf("vault: transit key %q did not rotate (latest version %d)", name, k.LatestVersion)
	}
	return KeyVersion{Version: version, Ref: name, RefVersion: k.LatestVersion}, nil
}

// DiscardVersion implements Provider. A Vault key version cannot be removed
// on its own; an unused one is harmless (no record points at it).
func (p *VaultProvider) DiscardVersion(ctx context.Context, rec *KeyRecord, v KeyVersion) error {
	return nil
}

func (p *VaultProvider) context(b Binding) string {
	return base64.StdEncoding.EncodeToString(b.AAD())
}

// checkVaultCiphertext verifies that a blob is a canonical Vault ciphertext
// of version want, before it is sent: "vault:v0:" is read by Vault as
// version 1, and non-canonical base64 would decode to the same bytes, so
// without this check some altered blobs would still decrypt.
func checkVaultCiphertext(rec *KeyRecord, v KeyVersion, wrapped []byte) error {
	prefix := "vault:v" + strconv.Itoa(v.RefVersion) + ":"
	if !bytes.HasPrefix(wrapped, []byte(prefix)) {
		return fmt.Errorf("%w: key %q version %d: not a Vault ciphertext of transit version %d", ErrDecrypt, rec.Name, v.Version, v.RefVersion)
	}
	if _, err := base64.StdEncoding.Strict().DecodeString(string(wrapped[len(prefix):])); err != nil {
		return fmt.Errorf("%w: key %q version %d: Vault ciphertext is not canonical base64", ErrDecrypt, rec.Name, v.Version)
	}
	return nil
}

func (p *VaultProvider) write(ctx context.Context, op string, rec *KeyRecord, v KeyVersion, parts []string, body map[string]any, out any) error {
	sec, err := p.client.Logical().WriteWithContext(ctx, p.path(parts...), body)
	if err != nil {
		return p.mapErr(ctx, op, v.Ref, err)
	}
	if sec == nil || sec.Data == nil {
		return fmt.Errorf("vault: %s with transit key %q: empty response", op, v.Ref)
	}
	if err := decodeData(sec.Data, out); err != nil {
		return fmt.Errorf("vault: %s with transit key %q: %w", op, v.Ref, err)
	}
	return nil
}

// Encrypt implements Provider (transit/encrypt with key_version).
func (p *VaultProvider) Encrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, plaintext []byte, b Binding) ([]byte, error) {
	if len(plaintext) > MaxSecretSize {
		return nil, fmt.Errorf("%w: %d bytes is more than a provider wraps (%d)", ErrInvalidArgument, len(plaintext), MaxSecretSize)
	}
	var out struct {
		Ciphertext string `json:"ciphertext"`
	}
	err := p.write(ctx, "encrypt", rec, v, []string{"encrypt", v.Ref}, map[string]any{
		"plaintext": base64.StdEncoding.EncodeToString(plaintext), "context": p.context(b), "key_version": v.RefVersion,
	}, &out)
	if err != nil {
		return nil, err
	}
	if err := checkVaultCiphertext(rec, v, []byte(out.Ciphertext)); err != nil {
		return nil, fmt.Errorf("vault: encrypt answered an unexpected ciphertext: %w", err)
	}
	return []byte(out.Ciphertext), nil
}

// Decrypt implements Provider (transit/decrypt).
func (p *VaultProvider) Decrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	if err := checkVaultCiphertext(rec, v, wrapped); err != nil {
		return nil, err
	}
	var out struct {
		Plaintext string `json:"plaintext"`
	}
	err := p.write(ctx, "decrypt", rec, v, []string{"decrypt", v.Ref}, map[string]any{
		"ciphertext": string(wrapped), "context": p.context(b),
	}, &out)
	if err != nil {
		return nil, err
	}
	pt, err := base64.StdEncoding.DecodeString(out.Plaintext)
	if err != nil {
		return nil, fmt.Errorf("vault: decrypt answered invalid base64")
	}
	return pt, nil
}

// GenerateDataKey implements Provider (transit/datakey/plaintext, 256 bits).
func (p *VaultProvider) GenerateDataKey(ctx context.Context, rec *KeyRecord, v KeyVersion, b Binding) ([]byte, []byte, error) {
	var out struct {
		Plaintext  string `json:"plaintext"`
		Ciphertext string `json:"ciphertext"`
	}
	err := p.write(ctx, "datakey", rec, v, []string{"datakey", "plaintext", v.Ref}, map[string]any{
		"context": p.context(b), "bits": 256, "key_version": v.RefVersion,
	}, &out)
	if err != nil {
		return nil, nil, err
	}
	dk, err := base64.StdEncoding.DecodeString(out.Plaintext)
	if err != nil || len(dk) != dataKeySize {
		return nil, nil, fmt.Errorf("vault: datakey answered a key that is not %d bytes", dataKeySize)
	}
	if err := checkVaultCiphertext(rec, v, []byte(out.Ciphertext)); err != nil {
		clear(dk)
		return nil, nil, fmt.Errorf("vault: datakey answered an unexpected ciphertext: %w", err)
	}
	return dk, []byte(out.Ciphertext), nil
}

// Rewrap implements Provider (transit/rewrap to key_version; the plaintext
// stays inside Vault).
func (p *VaultProvider) Rewrap(ctx context.Context, rec *KeyRecord, from, to KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	if err := checkVaultCiphertext(rec, from, wrapped); err != nil {
		return nil, err
	}
	if from.Ref != to.Ref {
		return nil, fmt.Errorf("%w: key %q versions %d and %d live in different transit keys", ErrInvalidArgument, rec.Name, from.Version, to.Version)
	}
	var out struct {
		Ciphertext string `json:"ciphertext"`
	}
	err := p.write(ctx, "rewrap", rec, to, []string{"rewrap", to.Ref}, map[string]any{
		"ciphertext": string(wrapped), "context": p.context(b), "key_version": to.RefVersion,
	}, &out)
	if err != nil {
		return nil, err
	}
	if err := checkVaultCiphertext(rec, to, []byte(out.Ciphertext)); err != nil {
		return nil, fmt.Errorf("vault: rewrap answered an unexpected ciphertext: %w", err)
	}
	return []byte(out.Ciphertext), nil
}

// ApplyPolicy implements Provider: sets the transit key's
// min_decryption_version to Vault's number for our MinDecryptionVersion.
func (p *VaultProvider) ApplyPolicy(ctx context.Context, rec *KeyRecord) error {
	v, ok := rec.Version(rec.MinDecryptionVersion)
	if !ok {
		return fmt.Errorf("%w: key %q has no version %d", ErrKeyNotFound, rec.Name, rec.MinDecryptionVersion)
	}
	_, err := p.client.Logical().WriteWithContext(ctx, p.path("keys", v.Ref, "config"), map[string]any{
		"min_decryption_version": v.RefVersion,
	})
	if err != nil {
		return p.mapErr(ctx, "configure key", v.Ref, err)
	}
	return nil
}

// Close implements Provider.
func (p *VaultProvider) Close() error { return nil }

// mapErr turns a Vault client error into the package's sentinels. Vault's
// own error strings never contain plaintext; they are kept for operators.
func (p *VaultProvider) mapErr(ctx context.Context, op, key string, err error) error {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		msg := strings.Join(re.Errors, "; ")
		switch {
		case re.StatusCode == 403:
			return fmt.Errorf("%w: vault %s %q: %s", ErrPermissionDenied, op, key, msg)
		case re.StatusCode == 404:
			return fmt.Errorf("%w: vault %s %q", ErrKeyNotFound, op, key)
		case re.StatusCode >= 500 || re.StatusCode == 429 || re.StatusCode == 412:
			return fmt.Errorf("%w: vault %s %q: HTTP %d: %s", ErrUnavailable, op, key, re.StatusCode, msg)
		case strings.Contains(msg, "encryption key not found") || strings.Contains(msg, "policy not found"):
			return fmt.Errorf("%w: vault transit key %q: %s", ErrKeyNotFound, key, msg)
		case strings.Contains(msg, "too old"):
			return fmt.Errorf("%w: vault %s %q: %s", ErrVersionRetired, op, key, msg)
		case op == "decrypt" || op == "rewrap":
			// message authentication failed, invalid ciphertext, version too new...
			return fmt.Errorf("%w: vault %s %q: %s", ErrDecrypt, op, key, msg)
		default:
			return fmt.Errorf("vault %s %q: HTTP %d: %s", op, key, re.StatusCode, msg)
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("vault %s %q: %w", op, key, ctx.Err())
	}
	var ne net.Error
	var ue *url.Error
	if errors.As(err, &ne) || errors.As(err, &ue) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: vault %s %q: %v", ErrUnavailable, op, key, err)
	}
	// The retrying client reports exhausted retries as a plain error.
	if strings.Contains(err.Error(), "giving up after") || strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("%w: vault %s %q: %v", ErrUnavailable, op, key, err)
	}
	return fmt.Errorf("vault %s %q: %w", op, key, err)
}

// decodeData re-decodes a response's data map into a struct (numbers arrive
// as json.Number).
func decodeData(data map[string]any, out any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// Check implements Checker: it reads a transit key that does not exist. Vault
// answers 404 when it is reachable and the token may read transit keys, 403
// for a bad token.
func (p *VaultProvider) Check(ctx context.Context) error {
	_, err := p.readKey(ctx, "allsource-health-check")
	if err == nil || errors.Is(err, ErrKeyNotFound) {
		return nil
	}
	return err
}
