package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/prometheus/client_golang/prometheus"
)

// Secrets is what the identity endpoints need of the server's key material:
// the API-key pepper and the token-signing keys (unwrapped from the KMS on
// each server), and field encryption for e-mail addresses. The server wiring
// implements it; the state machine only ever holds the wrapped forms.
type Secrets interface {
	// Pepper returns the keyed-hash key, or nil while it is not loaded yet.
	Pepper() *auth.Pepper
	// SigningKeys returns the verification key set and the active signing key
	// (nil while none is loaded).
	SigningKeys() (*auth.KeySet, *auth.SigningKey)
	// Seal and Open encrypt and decrypt a field bound to a tenant and a field
	// name (associated data): a ciphertext moved elsewhere does not open.
	Seal(ctx context.Context, plaintext []byte, tenant, field string) ([]byte, error)
	Open(ctx context.Context, ciphertext []byte, tenant, field string) ([]byte, error)
	// NewSigningKey generates a signing key version and wraps its private part,
	// ready to propose (rotation).
	NewSigningKey(ctx context.Context) (*fsm.AddSigningKeyCmd, error)
}

// IdentityConfig configures logins, tokens, API keys and the audit batcher.
type IdentityConfig struct {
	Secrets Secrets
	// Hasher hashes and verifies passwords (bounded concurrency). Required for
	// the user and login endpoints.
	Hasher *auth.Hasher
	// Password is the policy new passwords must pass (default auth.DefaultPasswordPolicy).
	Password auth.PasswordPolicy
	// Issuer and Audience of access tokens (defaults "allsource-guard").
	Issuer, Audience string
	// AccessTTL (default 24 h) and RefreshTTL (default 30 days).
	AccessTTL, RefreshTTL time.Duration
	// Leeway is the clock skew allowed on token times (default 5 s).
	Leeway time.Duration
	// Lockout is the brute-force rule (default 5 failures in 15 minutes).
	Lockout fsm.LockoutPolicy
	// AuditBatch and AuditFlush bound the audit batcher: a batch is proposed
	// at AuditBatch entries or AuditFlush after its first entry (defaults
	// 500 and 20 ms; larger raft entries cost more than they save, see BENCHMARKS.md). AuditInflight bounds batches in flight (default 4).
	AuditBatch    int
	AuditFlush    time.Duration
	AuditInflight int
	// KeyUseFlush is how often aggregated API-key uses are reported (default 10 s).
	KeyUseFlush time.Duration
	// PruneEvery is how often the leader drops expired revocations, sessions
	// and IP rules (default 1 minute).
	PruneEvery time.Duration
	// SecondFactor, when set, decides a login's second factor after the
	// password verified (the MFA component). It returns the matched TOTP step
	// (0 when none was needed). When nil, a user with an MFA secret cannot log in.
	SecondFactor func(ctx context.Context, u *fsm.User, totp, recoveryCode string) (uint64, error)
}

func (c *IdentityConfig) defaults() {
	if c.Issuer == "" {
		c.Issuer = "allsource-guard"
	}
	if c.Audience == "" {
		c.Audience = "allsource-guard"
	}
	if c.AccessTTL <= 0 {
		c.AccessTTL = auth.DefaultAccessTTL
	}
	if c.RefreshTTL <= 0 {
		c.RefreshTTL = 30 * 24 * time.Hour
	}
	if c.Leeway <= 0 {
		c.Leeway = 5 * time.Second
	}
	if c.Lockout.MaxFailures <= 0 {
		c.Lockout = fsm.DefaultLockout
	}
	if c.Password.MinRunes == 0 && !c.Password.RejectCommon {
		c.Password = auth.DefaultPasswordPolicy
	}
	if c.AuditBatch <= 0 {
		c.AuditBatch = 500
	}
	if c.AuditFlush <= 0 {
		c.AuditFlush = 20 * time.Millisecond
	}
	if c.AuditInflight <= 0 {
		c.AuditInflight = 4
	}
	if c.KeyUseFlush <= 0 {
		c.KeyUseFlush = 10 * time.Second
	}
	if c.PruneEvery <= 0 {
		c.PruneEvery = time.Minute
	}
}

// identity is the per-server state of the identity endpoints.
type identity struct {
	cfg   IdentityConfig
	audit *auditBatcher
	uses  *keyUses
	stop  context.CancelFunc
	done  chan struct{}
}

// ErrNoSecrets answers 503 unavailable while the server's key material
// (pepper, signing keys, the internal KMS key) is not loaded yet, as after a
// start; Secrets implementations return it then, so a request that needs it
// is told to retry instead of getting an internal error.
var ErrNoSecrets = apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the server's key material is not loaded yet; retry shortly")

// EnableIdentity turns on users, logins, tokens, API keys, IP rules and
// signing-key rotation, and starts the background work (audit batcher, key-use
// reports, pruning of expired records) until StopIdentity.
func (s *Server) EnableIdentity(cfg IdentityConfig) {
	cfg.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	id := &identity{cfg: cfg, stop: cancel, done: make(chan struct{})}
	id.audit = newAuditBatcher(s, cfg)
	s.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "allsource_audit_dropped_total",
			Help: "Audit entries this server dropped (invalid, buffer full, or unsent at shutdown)."},
			func() float64 { return float64(id.audit.dropped.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "allsource_audit_pending",
			Help: "Audit entries buffered or being sent, not yet committed."},
			func() float64 { return float64(id.audit.pending.Load()) }))
	id.uses = newKeyUses()
	s.id = id
	s.identityRoutes()
	go func() {
		defer close(id.done)
		s.identityLoop(ctx)
	}()
}

// StopIdentity stops the background work, flushing buffered audit entries and
// key uses. Call it before the raft node shuts down.
func (s *Server) StopIdentity() {
	if s.id == nil {
		return
	}
	s.id.stop()
	<-s.id.done
	s.id.audit.close()
}

// AuditBatcher returns the server's audit batcher (nil without identity): other
// components add audit entries through it.
func (s *Server) AuditBatcher() interface{ Add(fsm.AuditInput) } {
	if s.id == nil {
		return nil
	}
	return s.id.audit
}

func (s *Server) identityLoop(ctx context.Context) {
	touch := time.NewTicker(s.id.cfg.KeyUseFlush)
	prune := time.NewTicker(s.id.cfg.PruneEvery)
	defer touch.Stop()
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			s.flushKeyUses(context.Background())
			return
		case <-touch.C:
			s.flushKeyUses(ctx)
		case <-prune.C:
			s.pruneExpired(ctx)
		}
	}
}

// flushKeyUses reports the API-key uses aggregated since the last report as
// one command.
func (s *Server) flushKeyUses(ctx context.Context) {
	uses := s.id.uses.take()
	if len(uses) == 0 {
		return
	}
	for len(uses) > 0 {
		n := min(len(uses), 5000)
		if err := s.id.audit.send(ctx, batchBody{KeyUses: uses[:n]}); err != nil {
			s.log.Warn("reporting API key use failed", "keys", n, "err", err)
		}
		uses = uses[n:]
	}
}

// pruneExpired, on the leader, drops records that expired (revocations of
// expired tokens, expired refresh sessions and IP rules).
func (s *Server) pruneExpired(ctx context.Context) {
	if !s.node.IsLeader() {
		return
	}
	now := s.cfg.Now()
	var due bool
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		due = len(rd.ExpiredRevocations(now, 1)) > 0 || len(rd.ExpiredSessions(now, 1)) > 0 || len(rd.ExpiredIPRules(now, 1)) > 0
		return nil
	})
	if !due {
		return
	}
	if _, err := s.proposeSystem(ctx, fsm.CmdPruneExpired, &fsm.PruneExpiredCmd{Before: now}); err != nil {
		s.log.Warn("pruning expired records failed", "err", err)
	}
}

// proposeSystem applies a command as the cluster itself (not for an HTTP caller).
func (s *Server) proposeSystem(ctx context.Context, t fsm.CommandType, payload any) (*fsm.Result, error) {
	c, err := fsm.NewCommand(t, fsm.Header{Principal: s.systemPrincipal(), Time: s.cfg.Now().UnixNano()}, payload)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := s.node.Apply(ctx, c)
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

func (s *Server) systemPrincipal() fsm.Principal {
	return fsm.Principal{Kind: fsm.PrincipalSystem, ID: s.cfg.NodeID, Name: "cluster"}
}

// auditEvent records an event that is not part of a state-changing command
// (authentication failures, permission denials, cross-tenant attempts)
// through the batcher: buffered, group-committed, never on the request's
// critical path.
func (s *Server) auditEvent(r *http.Request, tenant string, a fsm.Action, actor fsm.Actor, outcome fsm.Outcome, errMsg string, meta map[string]string) {
	if s.id == nil {
		return
	}
	in := fsm.AuditInput{Tenant: tenant, Time: s.cfg.Now(), Action: a, Actor: actor,
		Resource: truncate(r.Method+" "+r.URL.Path, 512), Outcome: outcome, IP: s.clientIP(r),
		UserAgent: truncate(r.UserAgent(), 256), RequestID: requestID(r.Context()), Error: truncate(errMsg, 1024), Metadata: meta}
	s.id.audit.Add(in)
}

func actorOf(p fsm.Principal) fsm.Actor {
	return fsm.Actor{Kind: p.Kind, ID: p.ID, Name: p.Name, Role: string(p.Role)}
}

// auditOutcome runs after every authenticated handler: a 403 is a permission
// denial, a 404 on another tenant's URL a cross-tenant attempt. Both are
// recorded in the caller's own tenant chain (the operator's in the cluster's).
func (s *Server) auditOutcome(w http.ResponseWriter, r *http.Request, p fsm.Principal) {
	sw, ok := w.(*statusWriter)
	if !ok || s.id == nil {
		return
	}
	target := r.PathValue("t")
	switch {
	case sw.status == http.StatusForbidden:
		meta := map[string]string{}
		if target != "" {
			meta["target_tenant"] = truncate(target, 64)
		}
		s.auditEvent(r, p.Tenant, fsm.ActionPermissionDenied, actorOf(p), fsm.OutcomeFailure, "", meta)
	case sw.status == http.StatusNotFound && target != "" && !p.IsOperator() && target != p.Tenant:
		s.auditEvent(r, p.Tenant, fsm.ActionCrossTenantAttempt, actorOf(p), fsm.OutcomeFailure, "",
			map[string]string{"target_tenant": truncate(target, 64)})
	}
}

// isErr reports whether err is an API error with the given status.
func isErr(err error, status int) bool {
	var ae *Error
	return errors.As(err, &ae) && ae.Status == status
}

// AuditIdle reports whether the audit batcher holds nothing undelivered
// (tests wait on it instead of sleeping).
func (s *Server) AuditIdle() bool {
	return s.id == nil || s.id.audit.pending.Load() == 0
}
