package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/kms"
	"github.com/prometheus/client_golang/prometheus"
)

// The KMS endpoints (DESIGN.md §6, §10).
//
// Key management (/v1/kms/keys...) runs on the leader: the Keyring makes the
// backend material there and stores the record through KMSKeyStore (raft).
// The operator manages every key; a tenant admin manages its tenant's own
// keys; tenant members with Read see the keys their tenant may use (owned or
// granted). Only the operator grants keys, and only global ones.
//
// Key names (fsm/kmskeys.go): a tenant's key is stored as "<tenant>/<name>",
// a global key as "<name>". A tenant principal always uses short names: its
// own key "<tenant>/<name>" first, else a global key "<name>" granted to it
// (the state machine sees to it that there are never both); any other
// spelling ("b/payments", "../b/payments") is a key that does not exist, and
// answers exactly as one. The operator uses stored names: in a JSON body
// "acme/payments", in a /v1/kms/keys/{name} path "payments?tenant=acme" (or
// the escaped "acme%2Fpayments"). Responses show a tenant its own keys by
// short name, the operator every key by stored name.
//
// The field-encryption endpoints (/v1/kms/encrypt, decrypt, datakey, rewrap)
// run on whichever server receives them: key records are replicated, so any
// server can encrypt and any other decrypt. They need Write in the tenant the
// context names (a tenant principal's own tenant; the operator may name any),
// and a key that tenant may use. Every other key answers 404 exactly as a key
// that does not exist. Each request is audited per key (action
// kms_decrypt for decryptions, kms_operation otherwise: operation, key
// versions, item count, failures) through the audit batcher; plaintext never
// reaches the log.

// KMSConfig enables the KMS endpoints.
type KMSConfig struct {
	Keyring   *kms.Keyring
	Encryptor *kms.Encryptor
	// Status reports the configured backends' reachability (GET /health and
	// GET /v1/kms/status); nil means every backend is in process.
	Status func() []KMSBackendStatus
	// DefaultBackend is what a key gets when the request names none.
	DefaultBackend string
	// MaxBatch bounds the items of one encrypt/decrypt/datakey/rewrap call
	// (default 1000).
	MaxBatch int
	// RotationCheck is how often the leader rotates keys whose rotation
	// period elapsed (default 1 minute).
	RotationCheck time.Duration
	// Clock drives scheduled rotation (default the API's clock; tests inject one).
	Clock func() time.Time
}

// KMSBackendStatus is one backend's last reachability check.
type KMSBackendStatus struct {
	Backend   string    `json:"backend"`
	Default   bool      `json:"default,omitempty"`
	OK        bool      `json:"ok"`
	Error     string    `json:"error,omitempty"`
	CheckedAt time.Time `json:"checked_at,omitzero"`
}

type kmsState struct {
	cfg   KMSConfig
	stop  context.CancelFunc
	done  chan struct{}
	items *prometheus.CounterVec // allsource_kms_items_total{operation, outcome}
}

// registerKMSMetrics adds the KMS service's metrics to the server's registry.
func (s *Server) registerKMSMetrics(k *kmsState) {
	k.items = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "allsource_kms_items_total", Help: "Field items handled by /v1/kms/encrypt|decrypt|datakey|rewrap on this server, by operation and outcome (ok, error).",
	}, []string{"operation", "outcome"})
	cs := func(name, help string, f func(kms.CacheStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(f(k.cfg.Encryptor.CacheStats())) })
	}
	s.reg.MustRegister(k.items,
		cs("allsource_kms_datakey_cache_hits_total", "Field operations served by a cached data key.", func(c kms.CacheStats) uint64 { return c.Hits }),
		cs("allsource_kms_datakey_cache_misses_total", "Field operations that found no cached data key.", func(c kms.CacheStats) uint64 { return c.Misses }),
		cs("allsource_kms_backend_calls_total", "Data keys generated or unwrapped by a backend on a cache miss.", func(c kms.CacheStats) uint64 { return c.BackendCalls }))
	for _, b := range k.cfg.Keyring.Backends() {
		s.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "allsource_kms_backend_up",
			Help: "1 when the KMS backend answered its last reachability check, else 0.", ConstLabels: prometheus.Labels{"backend": b}},
			func() float64 {
				for _, st := range s.kmsBackendStatus() {
					if st.Backend == b && st.OK {
						return 1
					}
				}
				return 0
			}))
	}
}

// EnableKMS mounts the KMS endpoints and starts scheduled rotation on the
// leader, until StopKMS.
func (s *Server) EnableKMS(cfg KMSConfig) {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1000
	}
	if cfg.RotationCheck <= 0 {
		cfg.RotationCheck = time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = s.cfg.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.kms = &kmsState{cfg: cfg, stop: cancel, done: make(chan struct{})}
	s.registerKMSMetrics(s.kms)
	h := func(pattern string, fn http.HandlerFunc) { s.mux.HandleFunc(pattern, s.wrap(pattern, fn)) }
	h("POST /v1/kms/keys", s.write(s.createKMSKey))
	h("GET /v1/kms/keys", s.read(s.listKMSKeys))
	h("GET /v1/kms/keys/{name}", s.read(s.getKMSKey))
	h("PATCH /v1/kms/keys/{name}", s.write(s.updateKMSKey))
	h("POST /v1/kms/keys/{name}/rotate", s.write(s.rotateKMSKey))
	h("POST /v1/kms/keys/{name}/grants", s.write(s.grantKMSKey(false)))
	h("DELETE /v1/kms/keys/{name}/grants/{tenant}", s.write(s.grantKMSKey(true)))
	h("GET /v1/kms/status", s.anywhere(s.kmsStatus))
	for _, op := range []string{kmsOpEncrypt, kmsOpDecrypt, kmsOpDataKey, kmsOpRewrap} {
		h("POST /v1/kms/"+op, s.anywhere(s.kmsOperation(op)))
	}
	go func() {
		defer close(s.kms.done)
		s.kmsRotationLoop(ctx)
	}()
}

// StopKMS stops scheduled rotation.
func (s *Server) StopKMS() {
	if s.kms == nil {
		return
	}
	s.kms.stop()
	<-s.kms.done
}

// anywhere runs h on this server, whatever its raft role, for an
// authenticated caller.
func (s *Server) anywhere(h handlerP) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r, p)
		s.auditOutcome(w, r, p)
	}
}

func (s *Server) kmsBackendStatus() []KMSBackendStatus {
	if s.kms == nil {
		return nil
	}
	if s.kms.cfg.Status != nil {
		return s.kms.cfg.Status()
	}
	var out []KMSBackendStatus
	for _, b := range s.kms.cfg.Keyring.Backends() {
		out = append(out, KMSBackendStatus{Backend: b, OK: true, Default: b == s.kms.cfg.DefaultBackend})
	}
	return out
}

func (s *Server) kmsStatus(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	writeJSON(w, http.StatusOK, map[string]any{"backends": s.kmsBackendStatus()})
}

// kmsRotationLoop rotates, on the leader, the keys whose rotation period
// has elapsed. Each rotation is a raft command proposed as the cluster and
// audited (kms_key_rotated); Keyring.RotateDue re-checks every key, so a
// leadership change in between does not rotate twice.
func (s *Server) kmsRotationLoop(ctx context.Context) {
	t := time.NewTicker(s.kms.cfg.RotationCheck)
	defer t.Stop()
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.node.IsLeader() {
			continue
		}
		h := fsm.Header{Principal: fsm.Principal{Kind: fsm.PrincipalSystem, ID: s.cfg.NodeID, Name: "kms-rotation"}}
		rctx, cancel := context.WithTimeout(WithKMSCaller(ctx, h, ""), time.Minute)
		rotated, err := s.kms.cfg.Keyring.RotateDue(rctx, s.kms.cfg.Clock())
		cancel()
		if len(rotated) > 0 {
			s.log.Info("scheduled KMS key rotation", "keys", strings.Join(rotated, ","))
		}
		if err != nil && err.Error() != lastErr {
			s.log.Warn("scheduled KMS key rotation failed; will retry", "err", err)
		}
		if err != nil {
			lastErr = err.Error()
		} else {
			lastErr = ""
		}
	}
}

// ---- key management ----

// KMSKeyView is a key as the API shows it: versions and policy, never
// material.
type KMSKeyView struct {
	Name                 string           `json:"name"`
	Tenant               string           `json:"tenant,omitempty"`
	Backend              string           `json:"backend"`
	LatestVersion        int              `json:"latest_version"`
	MinDecryptionVersion int              `json:"min_decryption_version"`
	RotationPeriod       string           `json:"rotation_period,omitempty"`
	NextRotation         time.Time        `json:"next_rotation,omitzero"`
	Versions             []KMSVersionView `json:"versions"`
	Grants               []string         `json:"grants,omitempty"`
	FormerTenant         string           `json:"former_tenant,omitempty"`
	Revision             uint64           `json:"revision"`
	CreatedAt            time.Time        `json:"created_at"`
	UpdatedAt            time.Time        `json:"updated_at"`
}

// KMSVersionView is one key version.
type KMSVersionView struct {
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	// Ref is the backend's name for the material (AWS key ARN, Vault transit
	// key); shown to the operator only.
	Ref string `json:"ref,omitempty"`
}

// kmsDisplayName is how p sees stored key name: a tenant its own keys by
// short name, everything else (global keys; every key for the operator) by
// the stored name.
func kmsDisplayName(p fsm.Principal, stored string) string {
	if !p.IsOperator() && p.Tenant != "" {
		if short, ok := strings.CutPrefix(stored, p.Tenant+"/"); ok {
			return short
		}
	}
	return stored
}

func kmsKeyView(k *fsm.KMSKey, p fsm.Principal) (KMSKeyView, error) {
	rec, err := kms.UnmarshalKeyRecord(k.Record)
	if err != nil {
		return KMSKeyView{}, err
	}
	v := KMSKeyView{Name: kmsDisplayName(p, k.Name), Tenant: k.Tenant, Backend: rec.Backend, LatestVersion: rec.LatestVersion(),
		MinDecryptionVersion: rec.MinDecryptionVersion, NextRotation: rec.NextRotation(), FormerTenant: k.FormerTenant,
		Revision: k.Revision, CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt}
	if rec.RotationPeriod > 0 {
		v.RotationPeriod = rec.RotationPeriod.String()
	}
	for _, kv := range rec.Versions {
		vv := KMSVersionView{Version: kv.Version, CreatedAt: kv.CreatedAt}
		if p.IsOperator() {
			vv.Ref = kv.Ref
		}
		v.Versions = append(v.Versions, vv)
	}
	// Grantees see that they may use the key, not who else may.
	if p.IsOperator() || k.Tenant != "" && k.Tenant == p.Tenant {
		v.Grants = k.Grants
	}
	return v, nil
}

func kmsKeyNotFound(name string) error {
	return apiErr(http.StatusNotFound, CodeNotFound, fmt.Sprintf("key %q not found", name))
}

func (s *Server) kmsReady() error {
	if s.kms == nil {
		return apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the KMS is not enabled on this server")
	}
	return nil
}

// resolveKMSKey finds the key p calls name in tenant (for a tenant
// principal, its own tenant): the operator names any key by its stored name
// (and, in a tenant's context, that tenant's own keys by short name too);
// a tenant names its own key "<tenant>/<name>" by name, else a global key
// name granted to it (or, stored before keys were namespaced, a bare-named key
// of its own). Anything else is nil, as a key that does not exist.
func resolveKMSKey(rd *fsm.Reader, p fsm.Principal, tenant, name string) *fsm.KMSKey {
	if p.IsOperator() {
		if fsm.ValidKMSStoredName(name) != nil {
			return nil
		}
		// In a tenant's context, a short name is first the tenant's own key
		// (as the tenant would name it).
		if tenant != "" && !strings.Contains(name, "/") {
			if k, ok := rd.KMSKey(fsm.KMSStoredName(tenant, name)); ok && k.Tenant == tenant {
				return k
			}
		}
		k, _ := rd.KMSKey(name)
		return k
	}
	if fsm.ValidKMSKeyName(name) != nil || tenant == "" {
		return nil
	}
	if k, ok := rd.KMSKey(fsm.KMSStoredName(tenant, name)); ok && k.Tenant == tenant {
		return k
	}
	if k, ok := rd.KMSKey(name); ok && k.UsableBy(tenant) {
		return k
	}
	return nil
}

// kmsPathName is the key a /v1/kms/keys/{name} route names: for the operator
// {name} with an optional ?tenant= (the tenant's key "<tenant>/<name>"); for
// a tenant principal a short name, and a tenant parameter, if any, must be
// its own (any other: not found, like every key outside its reach).
func kmsPathName(r *http.Request, p fsm.Principal) (name string, err error) {
	name = r.PathValue("name")
	t := r.URL.Query().Get("tenant")
	if t == "" {
		return name, nil
	}
	if !p.IsOperator() {
		if t != p.Tenant {
			return "", kmsKeyNotFound(name)
		}
		return name, nil
	}
	if fsm.ValidTenantID(t) != nil {
		return "", apiErr(http.StatusBadRequest, CodeInvalidArgument, "tenant: not a valid tenant id")
	}
	if fsm.ValidKMSKeyName(name) != nil {
		return "", kmsKeyNotFound(name)
	}
	return fsm.KMSStoredName(t, name), nil
}

// visibleKMSKey loads the key the request's path names if p may see it: the
// operator any key, a tenant member (with Read) the keys its tenant owns or
// was granted. Any other key is not found.
func (s *Server) visibleKMSKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) (*fsm.KMSKey, error) {
	name, err := kmsPathName(r, p)
	if err != nil {
		return nil, err
	}
	var k *fsm.KMSKey
	_ = s.view(w, func(rd *fsm.Reader) error {
		k = resolveKMSKey(rd, p, p.Tenant, name)
		return nil
	})
	if k == nil {
		return nil, kmsKeyNotFound(name)
	}
	if !hasPerm(p, auth.PermRead) {
		return nil, apiErr(http.StatusForbidden, CodeForbidden, "this needs the read permission")
	}
	return k, nil
}

// manageableKMSKey loads key name if p may change it: the operator any key,
// a tenant admin its own tenant's keys. A key p may use but not manage (a
// grant, a global key) answers 403; a key it may not see, 404.
func (s *Server) manageableKMSKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) (*fsm.KMSKey, error) {
	k, err := s.visibleKMSKey(w, r, p)
	if err != nil {
		return nil, err
	}
	if p.IsOperator() {
		return k, nil
	}
	if k.Tenant != p.Tenant || !hasPerm(p, auth.PermAdmin) {
		return nil, apiErr(http.StatusForbidden, CodeForbidden, "only the key's tenant admins and the operator may manage it")
	}
	return k, nil
}

// kmsCallerCtx is the context the Keyring's store proposes with: the
// request's principal and identity (Apply re-checks the authority).
func (s *Server) kmsCallerCtx(r *http.Request, p fsm.Principal, owner string) context.Context {
	h := fsm.Header{Principal: p, RequestID: requestID(r.Context()), IP: s.clientIP(r), UserAgent: truncate(r.UserAgent(), 256)}
	return WithKMSCaller(r.Context(), h, owner)
}

type createKMSKeyReq struct {
	Name           string  `json:"name"`
	Tenant         *string `json:"tenant,omitempty"`
	Backend        string  `json:"backend,omitempty"`
	RotationPeriod string  `json:"rotation_period,omitempty"`
	BackendRef     string  `json:"backend_ref,omitempty"`
}

func parseRotationPeriod(s string) (time.Duration, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < kms.MinRotationPeriod || d > 100*365*24*time.Hour {
		return 0, apiErr(http.StatusBadRequest, CodeInvalidArgument, "rotation_period must be 0 or a duration of at least 1h such as 720h")
	}
	return d, nil
}

func (s *Server) createKMSKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	var req createKMSKeyReq
	err := s.kmsReady()
	if err == nil {
		err = decodeJSON(r, &req)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if e := fsm.ValidKMSKeyName(req.Name); e != nil {
		s.writeError(w, r, e)
		return
	}
	owner := ""
	switch {
	case p.IsOperator():
		if req.Tenant != nil {
			owner = *req.Tenant
		}
	default:
		owner = p.Tenant
		if req.Tenant != nil && *req.Tenant != p.Tenant {
			s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, fmt.Sprintf("tenant %q not found", *req.Tenant)))
			return
		}
		if !hasPerm(p, auth.PermAdmin) {
			s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "creating a key needs the admin permission"))
			return
		}
		if req.BackendRef != "" {
			// Adopting existing backend material reaches whatever the
			// server's own credentials can: the operator's call.
			s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "only the operator may adopt existing backend material (backend_ref)"))
			return
		}
	}
	if owner != "" {
		if err := fsm.ValidTenantID(owner); err != nil {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, err.Error()))
			return
		}
		var ok bool
		_ = s.fsm.View(func(rd *fsm.Reader) error { _, ok = rd.Tenant(owner); return nil })
		if !ok {
			s.writeError(w, r, apiErr(http.StatusNotFound, CodeNotFound, fmt.Sprintf("tenant %q not found", owner)))
			return
		}
	}
	period, err := parseRotationPeriod(req.RotationPeriod)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if len(req.BackendRef) > 2048 {
		s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "backend_ref is longer than 2048 bytes"))
		return
	}
	// A tenant's key lives in its own name space: the name can only be
	// taken by a key of the same tenant (or one the operator granted it),
	// so a 409 reveals nothing about other tenants.
	stored := fsm.KMSStoredName(owner, req.Name)
	_, err = s.kms.cfg.Keyring.CreateKey(s.kmsCallerCtx(r, p, owner), stored, kms.KeyOptions{Backend: req.Backend, RotationPeriod: period, BackendRef: req.BackendRef})
	if err != nil {
		if errors.Is(err, kms.ErrKeyExists) {
			err = apiErr(http.StatusConflict, CodeConflict, fmt.Sprintf("key name %q is taken", kmsDisplayName(p, stored)))
		}
		s.writeError(w, r, s.kmsError(err))
		return
	}
	s.writeKMSKey(w, r, p, stored, http.StatusCreated)
}

// writeKMSKey answers with the key stored under stored (as this leader
// applied it).
func (s *Server) writeKMSKey(w http.ResponseWriter, r *http.Request, p fsm.Principal, stored string, status int) {
	var k *fsm.KMSKey
	_ = s.view(w, func(rd *fsm.Reader) error {
		k, _ = rd.KMSKey(stored)
		return nil
	})
	if k == nil {
		s.writeError(w, r, kmsKeyNotFound(kmsDisplayName(p, stored)))
		return
	}
	v, err := kmsKeyView(k, p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, status, v)
}

func (s *Server) listKMSKeys(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	if err := s.kmsReady(); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !hasPerm(p, auth.PermRead) {
		s.writeError(w, r, apiErr(http.StatusForbidden, CodeForbidden, "this needs the read permission"))
		return
	}
	var keys []*fsm.KMSKey
	_ = s.view(w, func(rd *fsm.Reader) error {
		keys = rd.KMSKeys()
		return nil
	})
	out := struct {
		Keys []KMSKeyView `json:"keys"`
	}{Keys: []KMSKeyView{}}
	for _, k := range keys {
		if !p.IsOperator() && !k.UsableBy(p.Tenant) {
			continue
		}
		v, err := kmsKeyView(k, p)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		out.Keys = append(out.Keys, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getKMSKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	err := s.kmsReady()
	var k *fsm.KMSKey
	if err == nil {
		k, err = s.visibleKMSKey(w, r, p)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	v, err := kmsKeyView(k, p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) rotateKMSKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	err := s.kmsReady()
	var k *fsm.KMSKey
	if err == nil {
		k, err = s.manageableKMSKey(w, r, p)
	}
	if err == nil {
		_, err = s.kms.cfg.Keyring.RotateKey(s.kmsCallerCtx(r, p, ""), k.Name)
	}
	if err != nil {
		s.writeError(w, r, s.kmsError(err))
		return
	}
	s.writeKMSKey(w, r, p, k.Name, http.StatusOK)
}

type updateKMSKeyReq struct {
	MinDecryptionVersion *int    `json:"min_decryption_version,omitempty"`
	RotationPeriod       *string `json:"rotation_period,omitempty"`
}

func (s *Server) updateKMSKey(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	var req updateKMSKeyReq
	var k *fsm.KMSKey
	err := s.kmsReady()
	if err == nil {
		k, err = s.manageableKMSKey(w, r, p)
	}
	if err == nil {
		err = decodeJSON(r, &req)
	}
	if err == nil && req.MinDecryptionVersion == nil && req.RotationPeriod == nil {
		err = apiErr(http.StatusBadRequest, CodeInvalidArgument, "give min_decryption_version and/or rotation_period")
	}
	var period time.Duration
	if err == nil && req.RotationPeriod != nil {
		period, err = parseRotationPeriod(*req.RotationPeriod)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx := s.kmsCallerCtx(r, p, "")
	kr := s.kms.cfg.Keyring
	name := k.Name
	if req.RotationPeriod != nil {
		if _, err := kr.SetRotationPeriod(ctx, name, period); err != nil {
			s.writeError(w, r, s.kmsError(err))
			return
		}
	}
	if req.MinDecryptionVersion != nil {
		if _, err := kr.SetMinDecryptionVersion(ctx, name, *req.MinDecryptionVersion); err != nil {
			s.writeError(w, r, s.kmsError(err))
			return
		}
	}
	s.writeKMSKey(w, r, p, name, http.StatusOK)
}

type grantKMSKeyReq struct {
	Tenant string `json:"tenant"`
}

func (s *Server) grantKMSKey(revoke bool) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		err := s.kmsReady()
		var k *fsm.KMSKey
		if err == nil {
			k, err = s.visibleKMSKey(w, r, p)
		}
		if err == nil && !p.IsOperator() {
			err = apiErr(http.StatusForbidden, CodeForbidden, "only the operator grants keys")
		}
		var req grantKMSKeyReq
		if err == nil {
			if revoke {
				req.Tenant = r.PathValue("tenant")
			} else {
				err = decodeJSON(r, &req)
			}
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		res, err := s.propose(r, p, fsm.CmdGrantKMSKey, &fsm.GrantKMSKeyCmd{Name: k.Name, Tenant: req.Tenant, Revoke: revoke})
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		setIndex(w, res.Index)
		v, err := kmsKeyView(res.Value.(*fsm.KMSKey), p)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

// ---- field encryption ----

const (
	kmsOpEncrypt = "encrypt"
	kmsOpDecrypt = "decrypt"
	kmsOpDataKey = "datakey"
	kmsOpRewrap  = "rewrap"
)

type kmsContextReq struct {
	Tenant string `json:"tenant"`
	Field  string `json:"field"`
}

type kmsItemReq struct {
	Plaintext  string         `json:"plaintext,omitempty"`  // base64, encrypt
	Ciphertext string         `json:"ciphertext,omitempty"` // asg:v1:…, decrypt and rewrap
	Context    *kmsContextReq `json:"context,omitempty"`
}

// kmsOpReq is one request: a single item in the top-level fields, or a batch
// in items (each item's context defaults to the top-level one).
type kmsOpReq struct {
	Key        string         `json:"key,omitempty"`
	Plaintext  string         `json:"plaintext,omitempty"`
	Ciphertext string         `json:"ciphertext,omitempty"`
	Context    *kmsContextReq `json:"context,omitempty"`
	Items      []kmsItemReq   `json:"items,omitempty"`
}

// kmsItemResult is one item's answer.
type kmsItemResult struct {
	Ciphertext string          `json:"ciphertext,omitempty"`
	Plaintext  string          `json:"plaintext,omitempty"` // base64
	Key        string          `json:"key,omitempty"`
	KeyVersion int             `json:"key_version,omitempty"`
	Error      *kmsItemErrBody `json:"error,omitempty"`
}

type kmsItemErrBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// kmsKeyUse accumulates one key's part of a request for its audit entry.
type kmsKeyUse struct {
	n, failed int
	versions  map[int]bool
	firstErr  string
}

func (s *Server) kmsOperation(op string) handlerP {
	return func(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
		var req kmsOpReq
		err := s.kmsReady()
		if err == nil {
			err = decodeJSON(r, &req)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		batch := req.Items != nil
		items := req.Items
		if batch {
			if req.Plaintext != "" || req.Ciphertext != "" {
				s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "give either items or a single plaintext/ciphertext, not both"))
				return
			}
			if len(items) == 0 || len(items) > s.kms.cfg.MaxBatch {
				s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, fmt.Sprintf("items must hold 1 to %d entries", s.kms.cfg.MaxBatch)))
				return
			}
		} else {
			items = []kmsItemReq{{Plaintext: req.Plaintext, Ciphertext: req.Ciphertext}}
		}
		if (op == kmsOpEncrypt || op == kmsOpDataKey) && req.Key == "" {
			s.writeError(w, r, apiErr(http.StatusBadRequest, CodeInvalidArgument, "key is required"))
			return
		}
		uses := map[string]map[string]*kmsKeyUse{} // tenant → key → use
		results := make([]kmsItemResult, len(items))
		authz := map[string]kmsAuthz{} // tenant \x00 key \x00 by-stored-name → authorization outcome
		for i := range items {
			it := &items[i]
			c := it.Context
			if c == nil {
				c = req.Context
			}
			if c == nil {
				c = &kmsContextReq{}
			}
			res, tenant, key, err := s.kmsItem(r, p, op, req.Key, it, *c, authz)
			outcome := "ok"
			if err != nil {
				outcome = "error"
				err = s.kmsError(err)
				ae := toAPIError(err)
				if ae == nil {
					ae = apiErr(http.StatusInternalServerError, CodeInternal, "internal error")
				}
				res.Error = &kmsItemErrBody{Code: ae.Code, Message: ae.Message}
			}
			results[i] = res
			s.kms.items.WithLabelValues(op, outcome).Inc()
			if uses[tenant] == nil {
				uses[tenant] = map[string]*kmsKeyUse{}
			}
			u := uses[tenant][key]
			if u == nil {
				u = &kmsKeyUse{versions: map[int]bool{}}
				uses[tenant][key] = u
			}
			u.n++
			if err != nil {
				u.failed++
				if u.firstErr == "" {
					u.firstErr = res.Error.Code
				}
			} else if res.KeyVersion > 0 {
				u.versions[res.KeyVersion] = true
			}
			if err != nil && !batch {
				// A single item's failure is the request's error.
				s.auditKMS(r, p, op, uses)
				s.writeError(w, r, err)
				return
			}
		}
		s.auditKMS(r, p, op, uses)
		if !batch {
			writeJSON(w, http.StatusOK, results[0])
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"items": results})
	}
}

// kmsItem runs one item. It returns the tenant and key the item used (for
// the audit entry) and the item's error.
// kmsAuthz is a key's authorization outcome, cached per request.
type kmsAuthz struct {
	stored string
	err    error
}

func (s *Server) kmsItem(r *http.Request, p fsm.Principal, op, reqKey string, it *kmsItemReq, c kmsContextReq, authz map[string]kmsAuthz) (kmsItemResult, string, string, error) {
	var res kmsItemResult
	tenant, err := kmsTenant(p, c.Tenant)
	if err != nil {
		return res, p.Tenant, reqKey, err
	}
	key := reqKey // as the caller spelled it; once authorized, the stored name
	ctKey := ""   // the stored name a ciphertext carries
	var ct []byte
	var ctVersion int
	switch op {
	case kmsOpDecrypt, kmsOpRewrap:
		if it.Plaintext != "" {
			return res, tenant, key, apiErr(http.StatusBadRequest, CodeInvalidArgument, op+" takes a ciphertext, not a plaintext")
		}
		if it.Ciphertext == "" {
			return res, tenant, key, apiErr(http.StatusBadRequest, CodeInvalidArgument, "ciphertext is required")
		}
		// Decoded once here (the text form is most of the parsing cost);
		// the encryptor gets the binary form.
		bin, err := kms.DecodeText(it.Ciphertext)
		if err != nil {
			return res, tenant, key, err
		}
		parsed, err := kms.ParseCiphertext(bin)
		if err != nil {
			return res, tenant, key, err
		}
		ct, ctVersion, ctKey = bin, parsed.KeyVersion, parsed.KeyName
		if key == "" {
			key = parsed.KeyName
		}
	default:
		if it.Ciphertext != "" {
			return res, tenant, key, apiErr(http.StatusBadRequest, CodeInvalidArgument, op+" takes no ciphertext")
		}
		if op == kmsOpDataKey && it.Plaintext != "" {
			return res, tenant, key, apiErr(http.StatusBadRequest, CodeInvalidArgument, "datakey takes no plaintext")
		}
	}
	// A key named in the request is resolved as p names keys (a tenant: its
	// own short name, or a granted global key); a key taken from the
	// ciphertext is a stored name, usable if the tenant owns it or was
	// granted it. Either way a key outside the tenant's reach is not found.
	byStored := reqKey == ""
	ak := tenant + "\x00" + key + "\x00" + strconv.FormatBool(byStored)
	az, seen := authz[ak]
	if !seen {
		az.stored, az.err = s.usableKMSKey(r.Context(), p, tenant, key, byStored)
		authz[ak] = az
	}
	if az.err != nil {
		return res, tenant, key, az.err
	}
	if ctKey != "" && ctKey != az.stored {
		return res, tenant, key, fmt.Errorf("%w: the ciphertext was made with another key", kms.ErrKeyMismatch)
	}
	key = az.stored
	kc := kms.Context{Tenant: tenant, Field: c.Field}
	ctx := r.Context()
	res.Key = kmsDisplayName(p, key)
	// A key version rotated in a moment ago through another server may not
	// be applied here yet: catch up and try once more before answering that
	// it does not exist.
	applied := s.fsm.AppliedIndex()
	err = s.kmsCrypt(ctx, op, key, it, ct, ctVersion, kc, &res)
	if errors.Is(err, kms.ErrKeyNotFound) && s.catchUp(ctx, applied) {
		err = s.kmsCrypt(ctx, op, key, it, ct, ctVersion, kc, &res)
	}
	return res, tenant, key, err
}

// kmsCrypt runs an item's operation with key (its stored name) and puts its
// output in res.
func (s *Server) kmsCrypt(ctx context.Context, op, key string, it *kmsItemReq, ct []byte, ctVersion int, kc kms.Context, res *kmsItemResult) error {
	enc := s.kms.cfg.Encryptor
	switch op {
	case kmsOpEncrypt:
		pt, err := base64.StdEncoding.DecodeString(it.Plaintext)
		if err != nil {
			return apiErr(http.StatusBadRequest, CodeInvalidArgument, "plaintext must be standard base64")
		}
		out, err := enc.EncryptField(ctx, key, pt, kc)
		clear(pt)
		if err != nil {
			return err
		}
		res.Ciphertext, res.KeyVersion = kms.EncodeText(out), ciphertextVersion(out)
	case kmsOpDecrypt:
		pt, err := enc.DecryptField(ctx, key, ct, kc)
		if err != nil {
			return err
		}
		res.Plaintext, res.KeyVersion = base64.StdEncoding.EncodeToString(pt), ctVersion
		clear(pt)
	case kmsOpRewrap:
		out, err := enc.Rewrap(ctx, key, ct, kc)
		if err != nil {
			return err
		}
		res.Ciphertext, res.KeyVersion = kms.EncodeText(out), ciphertextVersion(out)
	case kmsOpDataKey:
		dk, err := enc.GenerateDataKey(ctx, key, kc)
		if err != nil {
			return err
		}
		res.Plaintext, res.Ciphertext, res.KeyVersion = base64.StdEncoding.EncodeToString(dk.Plaintext), kms.EncodeText(dk.Ciphertext), dk.KeyVersion
		clear(dk.Plaintext)
	}
	return nil
}

func ciphertextVersion(ct []byte) int {
	if c, err := kms.ParseCiphertext(ct); err == nil {
		return c.KeyVersion
	}
	return 0
}

// kmsTenant is the tenant an operation runs in: the context's, which a
// tenant principal may leave empty for its own and may not set to another
// (404, as for any other tenant's resource). It needs Write there.
func kmsTenant(p fsm.Principal, ctxTenant string) (string, error) {
	if p.IsOperator() {
		if ctxTenant != "" {
			if err := fsm.ValidTenantID(ctxTenant); err != nil {
				return "", apiErr(http.StatusBadRequest, CodeInvalidArgument, "context.tenant: "+err.Error())
			}
		}
		return ctxTenant, nil
	}
	if ctxTenant != "" && ctxTenant != p.Tenant {
		return "", apiErr(http.StatusNotFound, CodeNotFound, fmt.Sprintf("tenant %q not found", ctxTenant))
	}
	if !hasPerm(p, auth.PermWrite) {
		return "", apiErr(http.StatusForbidden, CodeForbidden, "KMS operations need the write permission")
	}
	return p.Tenant, nil
}

// usableKMSKey checks that key may be used in tenant and returns its stored
// name: owned by tenant or granted to it (the operator may use any key).
// With byStored, key is a stored name (from a ciphertext), else a name as p
// spells it (resolveKMSKey). Anything else is not found.
func (s *Server) usableKMSKey(ctx context.Context, p fsm.Principal, tenant, key string, byStored bool) (string, error) {
	if byStored && fsm.ValidKMSStoredName(key) != nil || !byStored && !p.IsOperator() && fsm.ValidKMSKeyName(key) != nil {
		return "", kmsKeyNotFound(key)
	}
	load := func() *fsm.KMSKey {
		var k *fsm.KMSKey
		_ = s.fsm.View(func(rd *fsm.Reader) error {
			if byStored {
				k, _ = rd.KMSKey(key)
			} else {
				k = resolveKMSKey(rd, p, tenant, key)
			}
			return nil
		})
		return k
	}
	usable := func(k *fsm.KMSKey) bool { return k != nil && (p.IsOperator() || k.UsableBy(tenant)) }
	seen := s.fsm.AppliedIndex()
	k := load()
	// A key created, or a grant added, a moment ago through another server
	// may not be applied here yet: catch up before answering that the key
	// does not exist. A key outside the caller's reach takes the same path
	// as one that does not exist, so that the time of the answer does not
	// tell them apart either.
	if !usable(k) && s.catchUp(ctx, seen) {
		k = load()
	}
	if !usable(k) {
		return "", kmsKeyNotFound(key)
	}
	return k.Name, nil
}

// auditKMS records one kms_operation entry per tenant and key of a request.
func (s *Server) auditKMS(r *http.Request, p fsm.Principal, op string, uses map[string]map[string]*kmsKeyUse) {
	if s.id == nil {
		return
	}
	for tenant, keys := range uses {
		for key, u := range keys {
			outcome := fsm.OutcomeSuccess
			switch {
			case u.failed == u.n:
				outcome = fsm.OutcomeFailure
			case u.failed > 0:
				outcome = fsm.OutcomePartial
			}
			vs := make([]int, 0, len(u.versions))
			for v := range u.versions {
				vs = append(vs, v)
			}
			slices.Sort(vs)
			var vstr []string
			for _, v := range vs[:min(len(vs), 32)] {
				vstr = append(vstr, strconv.Itoa(v))
			}
			meta := map[string]string{"operation": op, "count": strconv.Itoa(u.n), "failed": strconv.Itoa(u.failed)}
			resource := "kms"
			if key != "" { // a malformed ciphertext names no key
				meta["key"] = truncate(key, kms.MaxStoredKeyNameLen)
				resource = "kms-key/" + truncate(key, kms.MaxStoredKeyNameLen)
			}
			if len(vstr) > 0 {
				meta["versions"] = strings.Join(vstr, ",")
			}
			// Decryptions are reads of protected data: their own action, which
			// the threat engine's exfiltration detector counts (by "count").
			action := fsm.ActionKMSOperation
			if op == kmsOpDecrypt {
				action = fsm.ActionKMSDecrypt
			}
			in := fsm.AuditInput{Tenant: tenant, Time: s.cfg.Now(), Action: action, Actor: actorOf(p),
				Resource: resource, Outcome: outcome, IP: s.clientIP(r),
				UserAgent: truncate(r.UserAgent(), 256), RequestID: requestID(r.Context()), Error: u.firstErr, Metadata: meta}
			s.id.audit.Add(in)
		}
	}
}

var kmsLogOnce sync.Map // backend error class → logged, so a down backend does not flood the log

// kmsError maps the kms package's errors to API errors. Backend failures
// keep their details in the server log.
func (s *Server) kmsError(err error) error {
	var ae *Error
	var fe *fsm.Error
	if errors.As(err, &ae) || errors.As(err, &fe) {
		return err
	}
	msg := strings.TrimPrefix(err.Error(), "kms: ")
	switch {
	case errors.Is(err, kms.ErrUnavailable), errors.Is(err, kms.ErrPermissionDenied):
		if _, logged := kmsLogOnce.LoadOrStore(msg, true); !logged {
			s.log.Warn("KMS backend call failed", "err", err)
		}
		if errors.Is(err, kms.ErrPermissionDenied) {
			return apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the KMS backend refused this server's credentials")
		}
		return apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the KMS backend is unavailable; retry later")
	case errors.Is(err, kms.ErrDecrypt):
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, "decryption failed: the ciphertext was altered or belongs to another key, tenant or field")
	case errors.Is(err, kms.ErrKeyNotFound):
		return apiErr(http.StatusNotFound, CodeNotFound, msg)
	case errors.Is(err, kms.ErrKeyExists), errors.Is(err, kms.ErrConflict):
		return apiErr(http.StatusConflict, CodeConflict, msg)
	case errors.Is(err, kms.ErrInvalidArgument), errors.Is(err, kms.ErrMalformedCiphertext), errors.Is(err, kms.ErrKeyMismatch),
		errors.Is(err, kms.ErrVersionRetired), errors.Is(err, kms.ErrUnknownBackend):
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, msg)
	}
	return err
}
