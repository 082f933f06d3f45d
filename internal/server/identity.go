package server

import (
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/cluster"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/kms"
)

// Key material of the identity layer (DESIGN.md §4, §6).
//
// The state machine holds three kinds of secret, all only wrapped:
//
//   - the internal wrapping key: a kms.KeyRecord (name "guard-internal") whose
//     version material is itself wrapped by the KMS backend (for the local
//     backend, by the root key file every server loads). It is stored as the
//     secret "kms/guard-internal".
//   - the API-key pepper (32 random bytes, generated once by a leader),
//     wrapped under guard-internal, secret fsm.SecretPepper.
//   - each token-signing key's private part (fsm.SigningKey.Wrapped).
//
// Every server unwraps them at start and when they change (OnApply signals
// signing-key changes; the loader also polls until everything is present),
// and keeps the plaintext only in memory. User e-mail addresses are sealed
// under the same key, bound to their tenant and field.

const (
	internalKeyName   = "guard-internal"
	internalKeySecret = "kms/guard-internal"
)

// keyWrapper wraps small secrets with a KMS key, binding each to a tenant and
// a field: a blob moved to another tenant or field does not unwrap.
type keyWrapper interface {
	Wrap(ctx context.Context, plaintext []byte, tenant, field string) ([]byte, error)
	Unwrap(ctx context.Context, wrapped []byte, tenant, field string) ([]byte, error)
}

// kmsWrapper is a keyWrapper over a kms.Provider and one key record. A wrapped
// blob is the key version (one byte) followed by the provider's output.
type kmsWrapper struct {
	prov kms.Provider
	rec  *kms.KeyRecord
}

func (k *kmsWrapper) binding(tenant, field string) kms.Binding {
	return kms.Binding{Key: k.rec.Name, Purpose: kms.PurposeSecret, Context: kms.Context{Tenant: tenant, Field: field}}
}

func (k *kmsWrapper) Wrap(ctx context.Context, plaintext []byte, tenant, field string) ([]byte, error) {
	v := k.rec.Latest()
	ct, err := k.prov.Encrypt(ctx, k.rec, v, plaintext, k.binding(tenant, field))
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(v.Version)}, ct...), nil
}

func (k *kmsWrapper) Unwrap(ctx context.Context, wrapped []byte, tenant, field string) ([]byte, error) {
	if len(wrapped) < 2 {
		return nil, kms.ErrDecrypt
	}
	v, ok := k.rec.Version(int(wrapped[0]))
	if !ok {
		return nil, kms.ErrDecrypt
	}
	return k.prov.Decrypt(ctx, k.rec, v, wrapped[1:], k.binding(tenant, field))
}

// loadRootKey returns the local KMS root key: -kms-root-key-file (older name
// -kms-local-key-file), else ALLSOURCE_KMS_ROOT_KEY, else (dev mode) a key
// file generated in the data directory, else a key derived from the join
// token.
//
// The derived key is the zero-configuration default of a cluster: every
// server already shares the join token, and whoever holds it can join and
// receive the edges' view (whose pepper is sealed under the join token too),
// so it protects the wrapped secrets exactly as well as cluster membership is
// protected. A separate root key file is stronger: a copied data directory
// together with a leaked join token then still reveals nothing.
func loadRootKey(cfg Config, log *slog.Logger) ([]byte, error) {
	if cfg.KMSLocalKeyFile != "" {
		return kms.LoadLocalRootKey(cfg.KMSLocalKeyFile)
	}
	if v := os.Getenv(kms.DefaultRootKeyEnv); v != "" {
		return kms.LocalRootKeyFromEnv("")
	}
	if cfg.Dev || cfg.JoinToken == "" {
		return kms.LoadOrInitLocalRootKey(filepath.Join(cfg.DataDir, "kms-root.key"))
	}
	log.Warn("no -kms-root-key-file: the KMS root key that wraps the pepper and the signing keys is derived from the join token; " +
		"set -kms-root-key-file (the same file on every server) to separate the two")
	return hkdf.Key(sha256.New, []byte(cfg.JoinToken), []byte("allsource-kms-root-from-join-token-v1"), "allsource local KMS root key v1", kms.RootKeySize)
}

// secrets holds the unwrapped key material of one server. It implements
// api.Secrets (for the API) and api.EdgeSecrets (for the watch hub).
type secrets struct {
	log      *slog.Logger
	fsm      *fsm.FSM
	prov     kms.Provider
	alg      auth.Alg
	hsSecret []byte // configured HS256 secret, when -token-alg HS256 gives one
	onChange func()

	mu        sync.RWMutex
	wrap      keyWrapper
	pepperRaw []byte
	pepper    *auth.Pepper
	keyset    *auth.KeySet
	active    *auth.SigningKey
	unwrapped map[string]*auth.SigningKey // kid → key, cached
	keysAt    string                      // fingerprint of the key records last loaded

	kick chan struct{}
	done chan struct{} // closed when run returns
}

// newSecrets makes the holder early (the FSM's OnApply signals it); start
// gives it the state and the KMS.
func newSecrets(log *slog.Logger) *secrets {
	return &secrets{log: log.With("component", "secrets"), unwrapped: map[string]*auth.SigningKey{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// Pepper implements api.Secrets.
func (s *secrets) Pepper() *auth.Pepper {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pepper
}

// APIKeyPepper implements api.EdgeSecrets.
func (s *secrets) APIKeyPepper() ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pepperRaw, s.pepperRaw != nil
}

// SigningSecret implements api.EdgeSecrets: an HS256 key's secret.
func (s *secrets) SigningSecret(kid string) ([]byte, bool) {
	s.mu.RLock()
	k := s.unwrapped[kid]
	s.mu.RUnlock()
	if k == nil || k.Alg != auth.AlgHS256 {
		return nil, false
	}
	sec := k.HS256Secret()
	return sec, sec != nil
}

// SigningKeys implements api.Secrets.
func (s *secrets) SigningKeys() (*auth.KeySet, *auth.SigningKey) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.keyset, s.active
}

func (s *secrets) wrapper() (keyWrapper, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.wrap == nil {
		return nil, api.ErrNoSecrets
	}
	return s.wrap, nil
}

// Seal implements api.Secrets.
func (s *secrets) Seal(ctx context.Context, plaintext []byte, tenant, field string) ([]byte, error) {
	w, err := s.wrapper()
	if err != nil {
		return nil, err
	}
	return w.Wrap(ctx, plaintext, tenant, field)
}

// Open implements api.Secrets.
func (s *secrets) Open(ctx context.Context, ciphertext []byte, tenant, field string) ([]byte, error) {
	w, err := s.wrapper()
	if err != nil {
		return nil, err
	}
	return w.Unwrap(ctx, ciphertext, tenant, field)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// NewSigningKey implements api.Secrets: a fresh key of the configured
// algorithm, its private part wrapped.
func (s *secrets) NewSigningKey(ctx context.Context) (*fsm.AddSigningKeyCmd, error) {
	w, err := s.wrapper()
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	kid := "k" + now.Format("20060102T150405") + "-" + randomHex(3)
	var k *auth.SigningKey
	if s.alg == auth.AlgHS256 {
		secret := s.hsSecret
		if secret == nil {
			secret = make([]byte, 32)
			if _, err := rand.Read(secret); err != nil {
				return nil, err
			}
		}
		k, err = auth.NewHS256SigningKey(kid, secret, now)
	} else {
		k, err = auth.GenerateSigningKey(nil, kid, now)
	}
	if err != nil {
		return nil, err
	}
	raw, err := k.MarshalBinary()
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	wrapped, err := w.Wrap(ctx, raw, "", "signing_key/"+kid)
	if err != nil {
		return nil, err
	}
	cmd := &fsm.AddSigningKeyCmd{KID: kid, Alg: k.Alg, Wrapped: wrapped, KeyRef: internalKeySecret}
	if k.Alg == auth.AlgEdDSA {
		cmd.PublicKey = []byte(k.Ed25519PrivateKey().Public().(ed25519.PublicKey))
	}
	return cmd, nil
}

// changed asks the loader to re-read the state (OnApply, OnRestore). It never
// blocks: it runs on raft's apply goroutine.
func (s *secrets) changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// onApply is the part of fsm.Options.OnApply that concerns key material.
func (s *secrets) onApply(_ uint64, changes []fsm.Change) {
	for _, c := range changes {
		if c.Kind == fsm.ChangeSigningKey {
			s.changed()
			return
		}
	}
}

// ready reports whether every piece is loaded.
func (s *secrets) ready() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.wrap != nil && s.pepper != nil && s.active != nil
}

// run loads the key material, creating what is missing while this server
// leads, until ctx ends. It polls every 500 ms until everything is loaded,
// then waits for changes.
func (s *secrets) run(ctx context.Context, node *cluster.Node, propose func(ctx context.Context, t fsm.CommandType, payload any) (*fsm.Result, error)) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	lastErr := ""
	report := func(what string, err error) { // each distinct failure once, not every poll
		if err == nil || ctx.Err() != nil || err.Error() == lastErr {
			return
		}
		lastErr = err.Error()
		s.log.Warn(what+" failed; will retry", "err", err)
	}
	for {
		if !s.ready() && node.IsLeader() {
			report("creating identity key material", s.ensure(ctx, propose))
		}
		report("loading identity key material", s.load(ctx))
		var tick <-chan time.Time
		if !s.ready() {
			tick = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-tick:
		}
	}
}

// ensure creates, on the leader, what the cluster lacks: the internal key
// record, the pepper and a first signing key. Each command keeps the first
// value when two servers race.
func (s *secrets) ensure(ctx context.Context, propose func(ctx context.Context, t fsm.CommandType, payload any) (*fsm.Result, error)) error {
	var recSecret, pepSecret *fsm.Secret
	var hasActive bool
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		recSecret, _ = rd.Secret(internalKeySecret)
		pepSecret, _ = rd.Secret(fsm.SecretPepper)
		for _, k := range rd.SigningKeys() {
			hasActive = hasActive || k.State == auth.KeyActive
		}
		return nil
	})
	if recSecret == nil {
		now := time.Now().UTC()
		rec := &kms.KeyRecord{Name: internalKeyName, Backend: s.prov.Name(), MinDecryptionVersion: 1, CreatedAt: now, UpdatedAt: now, Revision: 1}
		v, err := s.prov.CreateVersion(ctx, rec, 1, kms.KeyOptions{})
		if err != nil {
			return fmt.Errorf("create the internal KMS key: %w", err)
		}
		v.CreatedAt = now
		rec.Versions = []kms.KeyVersion{v}
		b, err := kms.MarshalKeyRecord(rec)
		if err != nil {
			return err
		}
		if _, err := propose(ctx, fsm.CmdSetSecret, &fsm.SetSecretCmd{Secret: fsm.Secret{Name: internalKeySecret, Wrapped: b, KeyRef: s.prov.Name()}}); err != nil {
			return err
		}
	}
	if err := s.load(ctx); err != nil {
		return err
	}
	w, err := s.wrapper()
	if err != nil {
		return err
	}
	if pepSecret == nil {
		p := make([]byte, 32)
		if _, err := rand.Read(p); err != nil {
			return err
		}
		wrapped, err := w.Wrap(ctx, p, "", fsm.SecretPepper)
		clear(p)
		if err != nil {
			return err
		}
		if _, err := propose(ctx, fsm.CmdSetSecret, &fsm.SetSecretCmd{Secret: fsm.Secret{Name: fsm.SecretPepper, Wrapped: wrapped, KeyRef: internalKeySecret}}); err != nil {
			return err
		}
	}
	if !hasActive {
		cmd, err := s.NewSigningKey(ctx)
		if err != nil {
			return err
		}
		cmd.IfNone = true
		if _, err := propose(ctx, fsm.CmdAddSigningKey, cmd); err != nil {
			return err
		}
	}
	return nil
}

// load unwraps what the state holds and swaps it in.
func (s *secrets) load(ctx context.Context) error {
	var recSecret, pepSecret *fsm.Secret
	var keys []*fsm.SigningKey
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		recSecret, _ = rd.Secret(internalKeySecret)
		pepSecret, _ = rd.Secret(fsm.SecretPepper)
		keys = rd.SigningKeys()
		return nil
	})
	if recSecret == nil {
		return nil
	}
	w, err := s.wrapper()
	if err != nil {
		rec, err := kms.UnmarshalKeyRecord(recSecret.Wrapped)
		if err != nil {
			return fmt.Errorf("internal KMS key record: %w", err)
		}
		w = &kmsWrapper{prov: s.prov, rec: rec}
		s.mu.Lock()
		s.wrap = w
		s.mu.Unlock()
	}
	var errs []error
	pepperChanged := false
	if pepSecret != nil {
		raw, err := w.Unwrap(ctx, pepSecret.Wrapped, "", fsm.SecretPepper)
		if err != nil {
			errs = append(errs, fmt.Errorf("unwrap the pepper (is the KMS root key the cluster's?): %w", err))
		} else if p, err := auth.NewPepper(raw); err != nil {
			errs = append(errs, err)
		} else {
			s.mu.Lock()
			pepperChanged = !slices.Equal(s.pepperRaw, raw)
			s.pepper, s.pepperRaw = p, raw
			s.mu.Unlock()
		}
	}
	if err := s.loadSigningKeys(ctx, w, keys); err != nil {
		errs = append(errs, err)
	}
	if pepperChanged && s.onChange != nil {
		s.onChange()
	}
	return errors.Join(errs...)
}

func (s *secrets) loadSigningKeys(ctx context.Context, w keyWrapper, keys []*fsm.SigningKey) error {
	var fp strings.Builder
	for _, k := range keys {
		fp.WriteString(k.KID + "/" + string(k.State) + ";")
	}
	s.mu.RLock()
	same := s.keysAt == fp.String() && s.keyset != nil
	s.mu.RUnlock()
	if same {
		return nil
	}
	var vks []*auth.VerificationKey
	var active *auth.SigningKey
	unwrapped := map[string]*auth.SigningKey{}
	var errs []error
	for _, k := range keys {
		s.mu.RLock()
		sk := s.unwrapped[k.KID]
		s.mu.RUnlock()
		// Private parts are needed for the active key (signing) and HS256
		// keys (verifying); Ed25519 keys verify from the public part.
		if sk == nil && (k.State == auth.KeyActive || k.Alg == auth.AlgHS256 && k.State != auth.KeyRetired) {
			raw, err := w.Unwrap(ctx, k.Wrapped, "", "signing_key/"+k.KID)
			if err != nil {
				errs = append(errs, fmt.Errorf("unwrap signing key %s: %w", k.KID, err))
				continue
			}
			sk, err = auth.ParseSigningKey(raw)
			clear(raw)
			if err != nil {
				errs = append(errs, fmt.Errorf("signing key %s: %w", k.KID, err))
				continue
			}
		}
		if sk != nil {
			unwrapped[k.KID] = sk
		}
		var vk *auth.VerificationKey
		var err error
		switch {
		case k.Alg == auth.AlgEdDSA:
			vk, err = auth.NewEd25519VerificationKey(k.KID, k.PublicKey, k.State)
		case sk != nil:
			vk, err = sk.VerificationKey(k.State)
		default:
			continue // a retired HS256 key: nothing to verify with
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		vks = append(vks, vk)
		if k.State == auth.KeyActive {
			active = sk
		}
	}
	ks, err := auth.NewKeySet(vks...)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	s.mu.Lock()
	s.keyset, s.active, s.unwrapped = ks, active, unwrapped
	if len(errs) == 0 {
		s.keysAt = fp.String()
	}
	s.mu.Unlock()
	if s.onChange != nil {
		s.onChange()
	}
	return errors.Join(errs...)
}

// IdentitySettings are the identity layer's settings (flags and env).
type IdentitySettings struct {
	// TokenAlg is EdDSA (default) or HS256; HS256SecretFile optionally holds
	// the HS256 secret (at least 32 bytes; otherwise a random one is made).
	TokenAlg        string
	HS256SecretFile string
	TokenTTL        time.Duration
	RefreshTTL      time.Duration
	Issuer          string
	Audience        string
	// Argon2id parameters for new hashes (defaults m=19 MiB, t=2, p=1) and
	// the bound on concurrent hashes (default GOMAXPROCS).
	ArgonMemoryKiB  uint
	ArgonTime       uint
	ArgonThreads    uint
	MaxHashes       int
	AllowWeakArgon  bool // tests only
	LockoutFailures int
	LockoutWindow   time.Duration
	AuditBatch      int
	AuditFlush      time.Duration
	KeyUseFlush     time.Duration
}

func (c *IdentitySettings) validate() error {
	switch c.TokenAlg {
	case "", string(auth.AlgEdDSA), string(auth.AlgHS256):
	default:
		return errors.New("-token-alg must be EdDSA or HS256")
	}
	if c.HS256SecretFile != "" {
		if c.TokenAlg != string(auth.AlgHS256) {
			return errors.New("-token-hs256-secret-file needs -token-alg HS256")
		}
		b, err := os.ReadFile(c.HS256SecretFile)
		if err != nil {
			return fmt.Errorf("-token-hs256-secret-file: %w", err)
		}
		if len(strings.TrimSpace(string(b))) < auth.MinPepperBytes {
			return fmt.Errorf("-token-hs256-secret-file: %w", auth.ErrSecretTooShort)
		}
	}
	if c.TokenTTL < 0 || c.RefreshTTL < 0 || c.LockoutWindow < 0 || c.LockoutFailures < 0 || c.AuditBatch < 0 || c.AuditFlush < 0 {
		return errors.New("identity durations and counts must not be negative")
	}
	if c.TokenTTL > 0 && c.TokenTTL < time.Minute {
		return errors.New("-token-ttl must be at least 1m")
	}
	if c.AuditBatch > 10000 {
		return errors.New("-audit-batch must be at most 10000")
	}
	return c.argon().Validate()
}

func (c *IdentitySettings) argon() auth.Params {
	p := auth.DefaultParams
	if c.ArgonMemoryKiB > 0 {
		p.Memory = uint32(c.ArgonMemoryKiB)
	}
	if c.ArgonTime > 0 {
		p.Time = uint32(c.ArgonTime)
	}
	if c.ArgonThreads > 0 {
		p.Threads = uint8(c.ArgonThreads)
	}
	return p
}

// startIdentity loads the KMS root key, builds the password hasher, enables
// the identity endpoints and starts the key-material loader.
func (p *Server) startIdentity(ctx context.Context) error {
	cfg := p.cfg
	root, err := loadRootKey(cfg, p.log)
	if err != nil {
		return fmt.Errorf("kms root key: %w", err)
	}
	prov, err := kms.NewLocalProvider(root)
	clear(root)
	if err != nil {
		return err
	}
	st := cfg.Identity
	alg := auth.AlgEdDSA
	var hs []byte
	if st.TokenAlg == string(auth.AlgHS256) {
		alg = auth.AlgHS256
		if st.HS256SecretFile != "" {
			b, err := os.ReadFile(st.HS256SecretFile)
			if err != nil {
				return err
			}
			hs = []byte(strings.TrimSpace(string(b)))
		}
	}
	hasher, err := auth.NewHasher(auth.HasherConfig{Params: st.argon(), MaxConcurrent: st.MaxHashes, AllowWeakParams: st.AllowWeakArgon})
	if err != nil {
		return err
	}
	p.sec.fsm, p.sec.prov, p.sec.alg, p.sec.hsSecret = p.fsm, prov, alg, hs
	p.sec.onChange = p.hub.SecretsChanged
	lock := fsm.DefaultLockout
	if st.LockoutFailures > 0 {
		lock.MaxFailures = st.LockoutFailures
	}
	if st.LockoutWindow > 0 {
		lock.Window, lock.LockFor = st.LockoutWindow, st.LockoutWindow
	}
	p.api.EnableIdentity(api.IdentityConfig{Secrets: p.sec, Hasher: hasher, Issuer: st.Issuer, Audience: st.Audience,
		AccessTTL: st.TokenTTL, RefreshTTL: st.RefreshTTL, Lockout: lock, AuditBatch: st.AuditBatch,
		AuditFlush: st.AuditFlush, KeyUseFlush: st.KeyUseFlush, SecondFactor: p.secondFactor})
	p.hub.SetSecrets(p.sec)
	propose := func(ctx context.Context, t fsm.CommandType, payload any) (*fsm.Result, error) {
		c, err := fsm.NewCommand(t, fsm.Header{Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: cfg.NodeID, Name: "identity"},
			Time: time.Now().UnixNano()}, payload)
		if err != nil {
			return nil, err
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		res, err := p.node.Apply(actx, c)
		if err == nil {
			err = res.Error()
		}
		return res, err
	}
	go func() {
		defer close(p.sec.done)
		p.sec.run(ctx, p.node, propose)
	}()
	return nil
}

// Secrets exposes the server's unwrapped key material holder (tests, MFA wiring).
func (p *Server) Secrets() interface {
	api.Secrets
	api.EdgeSecrets
} {
	return p.sec
}

// wait returns once the loader has stopped (or was never started).
func (s *secrets) wait() {
	if s.fsm == nil {
		return
	}
	<-s.done
}
