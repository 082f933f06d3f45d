package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/kms"
)

// The KMS service of a server (DESIGN.md §6): a Keyring over the replicated
// key store (api.KMSKeyStore) with the local backend — always there, keyed by
// the same root key that protects the product's own secrets — and, when
// -kms-backend names one, a remote backend (vault, aws, pkcs11) that new keys
// use by default. A remote backend that cannot be opened or reached at start
// does not stop the server: it says so in the log and in /health, everything
// that does not need that backend keeps working (logins, tokens, the local
// backend's keys), and the backend is retried in the background.

// KMSSettings configure the KMS service (flags -kms-*, env ALLSOURCE_KMS_*).
type KMSSettings struct {
	// Backend is the default backend of new keys: local (default), vault,
	// aws, or pkcs11 (only in a binary built with -tags pkcs11).
	Backend string

	VaultAddress       string
	VaultToken         string
	VaultTokenFile     string
	VaultNamespace     string
	VaultMount         string
	VaultKeyPrefix     string
	VaultCACert        string
	VaultClientCert    string
	VaultClientKey     string
	VaultTLSServerName string
	VaultTLSSkipVerify bool
	VaultTimeout       time.Duration

	// AWS: region and credentials come from the standard chain (AWS_REGION,
	// AWS_PROFILE, AWS_ACCESS_KEY_ID, instance roles, ...) unless set here.
	AWSRegion      string
	AWSEndpoint    string
	AWSProfile     string
	AWSAliasPrefix string
	AWSTimeout     time.Duration

	PKCS11Library    string
	PKCS11TokenLabel string
	PKCS11PINFile    string

	// RotationCheck is how often the leader looks for keys due for
	// scheduled rotation (default 1m); CheckEvery how often a remote
	// backend's reachability is checked (default 30s; 5s while it is down).
	RotationCheck time.Duration
	CheckEvery    time.Duration
	// Clock stamps key versions and drives scheduled rotation (tests).
	Clock func() time.Time
}

func (k *KMSSettings) validate() error {
	switch k.Backend {
	case "", "local", "vault", "aws":
	case "pkcs11":
		if !slices.Contains(kms.RegisteredProviders(), "pkcs11") {
			return errors.New("-kms-backend pkcs11 needs a binary built with cgo and -tags pkcs11 (this one was not); see README.md, KMS and encryption")
		}
	default:
		return fmt.Errorf("-kms-backend must be local, vault, aws or pkcs11, not %q", k.Backend)
	}
	if k.RotationCheck < 0 || k.CheckEvery < 0 || k.VaultTimeout < 0 || k.AWSTimeout < 0 {
		return errors.New("KMS durations must not be negative")
	}
	return nil
}

// providerSettings are the OpenProvider settings of the remote backend.
func (k *KMSSettings) providerSettings() map[string]string {
	m := map[string]string{}
	set := func(key, v string) {
		if v != "" {
			m[key] = v
		}
	}
	dur := func(key string, d time.Duration) {
		if d > 0 {
			m[key] = d.String()
		}
	}
	switch k.Backend {
	case "vault":
		set("address", k.VaultAddress)
		set("token", k.VaultToken)
		set("token_file", k.VaultTokenFile)
		set("namespace", k.VaultNamespace)
		set("mount", k.VaultMount)
		set("key_prefix", k.VaultKeyPrefix)
		set("ca_cert", k.VaultCACert)
		set("client_cert", k.VaultClientCert)
		set("client_key", k.VaultClientKey)
		set("tls_server_name", k.VaultTLSServerName)
		if k.VaultTLSSkipVerify {
			m["tls_skip_verify"] = strconv.FormatBool(true)
		}
		dur("timeout", k.VaultTimeout)
	case "aws":
		set("region", k.AWSRegion)
		set("endpoint", k.AWSEndpoint)
		set("profile", k.AWSProfile)
		set("alias_prefix", k.AWSAliasPrefix)
		dur("timeout", k.AWSTimeout)
	case "pkcs11":
		set("library", k.PKCS11Library)
		set("token_label", k.PKCS11TokenLabel)
		set("pin_file", k.PKCS11PINFile)
	}
	return m
}

// remoteProvider stands for the configured remote backend from the start:
// until the backend could be opened, every call fails with ErrUnavailable
// (so the Keyring and the API work, and answer 503 for that backend's keys
// only); the opener retries in the background.
type remoteProvider struct {
	name string

	mu      sync.RWMutex
	p       kms.Provider
	openErr error
	status  api.KMSBackendStatus
}

func (r *remoteProvider) get() (kms.Provider, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.p == nil {
		err := r.openErr
		if err == nil {
			err = errors.New("not opened yet")
		}
		return nil, fmt.Errorf("%w: %s backend: %v", kms.ErrUnavailable, r.name, err)
	}
	return r.p, nil
}

func (r *remoteProvider) Name() string { return r.name }

func (r *remoteProvider) CreateVersion(ctx context.Context, rec *kms.KeyRecord, version int, opts kms.KeyOptions) (kms.KeyVersion, error) {
	p, err := r.get()
	if err != nil {
		return kms.KeyVersion{}, err
	}
	return p.CreateVersion(ctx, rec, version, opts)
}

func (r *remoteProvider) DiscardVersion(ctx context.Context, rec *kms.KeyRecord, v kms.KeyVersion) error {
	p, err := r.get()
	if err != nil {
		return err
	}
	return p.DiscardVersion(ctx, rec, v)
}

func (r *remoteProvider) Encrypt(ctx context.Context, rec *kms.KeyRecord, v kms.KeyVersion, pt []byte, b kms.Binding) ([]byte, error) {
	p, err := r.get()
	if err != nil {
		return nil, err
	}
	return p.Encrypt(ctx, rec, v, pt, b)
}

func (r *remoteProvider) Decrypt(ctx context.Context, rec *kms.KeyRecord, v kms.KeyVersion, w []byte, b kms.Binding) ([]byte, error) {
	p, err := r.get()
	if err != nil {
		return nil, err
	}
	return p.Decrypt(ctx, rec, v, w, b)
}

func (r *remoteProvider) GenerateDataKey(ctx context.Context, rec *kms.KeyRecord, v kms.KeyVersion, b kms.Binding) ([]byte, []byte, error) {
	p, err := r.get()
	if err != nil {
		return nil, nil, err
	}
	return p.GenerateDataKey(ctx, rec, v, b)
}

func (r *remoteProvider) Rewrap(ctx context.Context, rec *kms.KeyRecord, from, to kms.KeyVersion, w []byte, b kms.Binding) ([]byte, error) {
	p, err := r.get()
	if err != nil {
		return nil, err
	}
	return p.Rewrap(ctx, rec, from, to, w, b)
}

func (r *remoteProvider) ApplyPolicy(ctx context.Context, rec *kms.KeyRecord) error {
	p, err := r.get()
	if err != nil {
		return err
	}
	return p.ApplyPolicy(ctx, rec)
}

// Close closes the backend if it was opened; a second Close does nothing.
func (r *remoteProvider) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil {
		return nil
	}
	err := r.p.Close()
	r.p, r.openErr = nil, errors.New("closed")
	return err
}

func (r *remoteProvider) statusNow() api.KMSBackendStatus {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.status
}

func (r *remoteProvider) setStatus(err error, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = api.KMSBackendStatus{Backend: r.name, Default: true, OK: err == nil, CheckedAt: at.UTC()}
	if err != nil {
		r.status.Error = err.Error()
	}
}

// run opens the backend (retrying) and then checks its reachability every
// `every` (every 5 s while it is down), logging each change of state once.
func (r *remoteProvider) run(ctx context.Context, settings map[string]string, every time.Duration, log *slog.Logger) {
	log = log.With("component", "kms", "backend", r.name)
	wasOK, first := false, true
	for {
		err := r.check(ctx, settings)
		if ctx.Err() != nil {
			return
		}
		r.setStatus(err, time.Now())
		switch {
		case err != nil && (first || wasOK):
			log.Error("the KMS backend cannot be reached; keys in it cannot be used until it can "+
				"(everything else keeps working; retrying in the background)", "err", err)
		case err == nil && !wasOK:
			log.Info("the KMS backend is reachable")
		}
		wasOK, first = err == nil, false
		wait := every
		if err != nil {
			wait = min(every, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (r *remoteProvider) open(ctx context.Context, settings map[string]string) error {
	r.mu.RLock()
	opened := r.p != nil
	r.mu.RUnlock()
	if opened {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	np, err := kms.OpenProvider(cctx, r.name, settings)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.openErr = err
		return fmt.Errorf("open: %w", err)
	}
	r.p, r.openErr = np, nil
	return nil
}

func (r *remoteProvider) check(ctx context.Context, settings map[string]string) error {
	if err := r.open(ctx, settings); err != nil {
		return err
	}
	p, err := r.get()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return kms.CheckProvider(cctx, p)
}

// kmsParts is the server's KMS service.
type kmsParts struct {
	store   *api.KMSKeyStore
	keyring *kms.Keyring
	remote  *remoteProvider
	done    chan struct{}
}

// startKMS builds the keyring over the replicated store and mounts the KMS
// endpoints. local is the local provider the identity layer uses too.
//
// The remote backend belongs to startKMS until the keyring holds it (then
// stopKMS closes it with the keyring): every error in between closes it, and
// its background checker starts only once nothing can fail any more.
func (p *Server) startKMS(ctx context.Context, local kms.Provider) (err error) {
	st := p.cfg.KMS
	providers := []kms.Provider{local}
	def := "local"
	var r *remoteProvider
	var settings map[string]string
	if st.Backend != "" && st.Backend != "local" {
		settings = st.providerSettings()
		// Configuration mistakes (unknown settings, a missing region) stop
		// the start; an unreachable backend does not.
		r = &remoteProvider{name: st.Backend}
		r.setStatus(errors.New("not checked yet"), time.Time{})
		// Opening does not contact vault or aws (pkcs11 loads its module):
		// a failure here is a configuration mistake unless it says the
		// backend is unavailable.
		if err := r.open(ctx, settings); err != nil {
			if !errors.Is(err, kms.ErrUnavailable) {
				return fmt.Errorf("-kms-backend %s: %w", st.Backend, err)
			}
			r.setStatus(err, time.Now())
		}
		defer func() {
			if err != nil {
				_ = r.Close()
			}
		}()
		providers = append(providers, r)
		def = st.Backend
	}
	store := api.NewKMSKeyStore(p.fsm, p.node)
	kr, err := kms.NewKeyring(kms.KeyringConfig{Store: store, Providers: providers, DefaultBackend: def, Clock: st.Clock})
	if err != nil {
		return err
	}
	p.kms.store, p.kms.keyring, p.kms.remote = store, kr, r
	p.kmsStore.Store(store)
	p.kms.done = make(chan struct{})
	if r != nil {
		every := st.CheckEvery
		if every <= 0 {
			every = 30 * time.Second
		}
		go func() {
			defer close(p.kms.done)
			r.run(ctx, settings, every, p.log)
		}()
	} else {
		close(p.kms.done)
	}
	enc := kms.NewEncryptor(kr, kms.EncryptorConfig{})
	p.api.EnableKMS(api.KMSConfig{Keyring: kr, Encryptor: enc, DefaultBackend: def, RotationCheck: st.RotationCheck,
		Clock: st.Clock, Status: p.kmsStatus})
	return nil
}

// kmsStatus reports every configured backend for /health.
func (p *Server) kmsStatus() []api.KMSBackendStatus {
	out := []api.KMSBackendStatus{{Backend: "local", OK: true, Default: p.kms.remote == nil}}
	if p.kms.remote != nil {
		out = append(out, p.kms.remote.statusNow())
	}
	return out
}

// stopKMS stops the KMS service's background work.
func (p *Server) stopKMS() {
	if p.kms.done == nil {
		return
	}
	p.api.StopKMS()
	<-p.kms.done
	if p.kms.keyring != nil {
		_ = p.kms.keyring.Close()
	}
}

// KMSKeyring is the server's keyring (tests).
func (p *Server) KMSKeyring() *kms.Keyring { return p.kms.keyring }
