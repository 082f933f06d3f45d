package enforcement

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/internal/tally"
)

// The decision pipeline: one implementation behind the three front ends
// (middleware, reverse proxy, forward-auth). For each request, in order:
//
//  1. the view must be loaded and, with MaxStaleness, fresh enough (else 503);
//  2. the client address (trusted-proxy aware) must not be globally blocked;
//  3. authentication: an API key (keyed hash with the pepper, constant-time
//     compare) or a JWT (signature checked once, then cached until expiry;
//     revocation, user status and tokens_valid_after checked every time);
//  4. the credential's tenant must exist and be active;
//  5. the full IP filter for that tenant (global block → tenant block →
//     tenant allow → global allow → default);
//  6. the route's permission (RouteMap) must be held by the role;
//  7. the tenant's token bucket must hold the route's cost (this edge's
//     share of the fleet-wide budget).
//
// Decide takes no lock but the token bucket's and the caches' shard locks,
// reads one immutable View, and allocates only for denials and new request
// ids.

// AuditSink receives the edge's security events. Both methods must return
// at once (the shipper buffers, aggregates and ships them).
type AuditSink interface {
	Record(e fsm.AuditInput)
	KeyUsed(id string, at time.Time)
}

// PipelineConfig configures a Pipeline.
type PipelineConfig struct {
	Clock    Clock
	Resolver *ClientIPResolver // nil: the connection's address is the client
	Routes   *RouteMap         // nil: GET/HEAD/OPTIONS need read, others write
	// Issuer and Audience that access tokens must carry (the servers' minting
	// configuration); Leeway is the clock skew allowed on exp/nbf/iat.
	Issuer, Audience string
	Leeway           time.Duration
	// DevMode: requests without a credential act as dev-user of dev-tenant
	// with role admin, and rate limiting is bypassed (DESIGN.md §4).
	DevMode bool
	// TokenCacheSize bounds the verified-token cache (default 65536).
	TokenCacheSize int
	Buckets        *Buckets
	Audit          AuditSink // nil: events are dropped
	// Counts, when set, takes every rate-limited request's cost per tenant,
	// admitted or not, once: fleet limiting (DemandMeter) and the usage
	// reports for the servers' adaptive limiter (threat.UsageMeter) both
	// read it.
	Counts *tally.Meter
	// MaxStaleness > 0 denies every request (503) once the view has not been
	// confirmed by a server for that long; Staleness reports how long it has
	// been (nil: always fresh).
	MaxStaleness time.Duration
	Staleness    func() time.Duration
}

// Pipeline decides requests from the current View.
type Pipeline struct {
	cfg    PipelineConfig
	view   atomic.Pointer[View]
	tokens *tokenCache
	stats  pipelineStats
}

type pipelineStats struct {
	allowed, unauthenticated, forbidden, ipBlocked, limited, unavailable atomic.Uint64
}

// DecisionStats counts decisions by outcome.
type DecisionStats struct {
	Allowed         uint64 `json:"allowed"`
	Unauthenticated uint64 `json:"unauthenticated"`
	Forbidden       uint64 `json:"forbidden"`
	IPBlocked       uint64 `json:"ip_blocked"`
	RateLimited     uint64 `json:"rate_limited"`
	Unavailable     uint64 `json:"unavailable"`
	TokenCacheHits  uint64 `json:"token_cache_hits"`
	TokenCacheMiss  uint64 `json:"token_cache_misses"`
	TokenCacheSize  int    `json:"token_cache_size"`
}

// NewPipeline returns a pipeline with no view: it answers 503 until SetView.
func NewPipeline(cfg PipelineConfig) *Pipeline {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock
	}
	if cfg.Buckets == nil {
		cfg.Buckets = NewBuckets(BucketsConfig{Clock: cfg.Clock})
	}
	if cfg.Resolver == nil {
		cfg.Resolver, _ = NewClientIPResolver(nil)
	}
	if cfg.Issuer == "" {
		cfg.Issuer = DefaultIssuer
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	return &Pipeline{cfg: cfg, tokens: newTokenCache(cfg.TokenCacheSize)}
}

// Default token issuer and audience (the servers' defaults).
const (
	DefaultIssuer   = "allsource-guard"
	DefaultAudience = "allsource-guard"
)

// SetView publishes a new view; requests from now on decide from it.
func (p *Pipeline) SetView(v *View) { p.view.Store(v) }

// View returns the current view (nil before the first).
func (p *Pipeline) View() *View { return p.view.Load() }

// Buckets returns the pipeline's token buckets.
func (p *Pipeline) Buckets() *Buckets { return p.cfg.Buckets }

// Stats returns decision counters.
func (p *Pipeline) Stats() DecisionStats {
	s := &p.stats
	return DecisionStats{Allowed: s.allowed.Load(), Unauthenticated: s.unauthenticated.Load(), Forbidden: s.forbidden.Load(),
		IPBlocked: s.ipBlocked.Load(), RateLimited: s.limited.Load(), Unavailable: s.unavailable.Load(),
		TokenCacheHits: p.tokens.hits.Load(), TokenCacheMiss: p.tokens.misses.Load(), TokenCacheSize: p.tokens.len()}
}

// Request is what the pipeline needs of a request: the front ends fill it
// from the request itself or, for forward-auth, from the proxy's headers.
type Request struct {
	Method     string
	Path       string // the URL path, without the query
	RemoteAddr string // the connection's peer, "ip:port"
	Header     http.Header
}

// Credential kinds of an Identity.
const (
	CredentialJWT    = "jwt"
	CredentialAPIKey = "api_key"
	CredentialDev    = "dev"
)

// Identity is the authenticated caller.
type Identity struct {
	Tenant     string
	Subject    string // user id, API key id, or dev-user
	Role       auth.Role
	Credential string // CredentialJWT, CredentialAPIKey or CredentialDev
	Name       string // API key name (for audit)
}

// Decision is the pipeline's answer.
type Decision struct {
	Allowed bool
	// Status is 200 when allowed, else 401, 403, 429 or 503; Code is the
	// API error code (unauthenticated, forbidden, rate_limited, unavailable).
	Status    int
	Code      string
	Message   string
	RequestID string
	Identity  Identity
	ClientIP  netip.Addr
	// Rate is the token-bucket outcome (Limit 0: not limited).
	Rate RateResult
}

// Error codes of denials (DESIGN.md §10).
const (
	CodeUnauthenticated = "unauthenticated"
	CodeForbidden       = "forbidden"
	CodeRateLimited     = "rate_limited"
	CodeUnavailable     = "unavailable"
)

// DevIdentity is dev mode's synthetic caller.
var DevIdentity = Identity{Tenant: "dev-tenant", Subject: "dev-user", Role: auth.RoleAdmin, Credential: CredentialDev, Name: "dev-user"}

// Decide runs the pipeline on one request.
func (p *Pipeline) Decide(r *Request) Decision {
	d := Decision{RequestID: RequestID(r.Header)}
	v := p.view.Load()
	if v == nil {
		return p.unavailable(d, "the edge has no enforcement view yet")
	}
	if p.cfg.MaxStaleness > 0 && p.cfg.Staleness != nil && p.cfg.Staleness() > p.cfg.MaxStaleness {
		return p.unavailable(d, "the edge has not reached a server for longer than its maximum staleness")
	}
	now := p.cfg.Clock.Now()
	addr, _ := p.cfg.Resolver.Resolve(r.RemoteAddr, r.Header)
	d.ClientIP = addr
	if ipd := v.ip.Check("", addr); !ipd.Allowed && (ipd.Reason == IPReasonGlobalBlock || ipd.Reason == IPReasonInvalidAddress) {
		return p.ipBlocked(d, r, now, "", ipd)
	}

	tok, fromHeader := credential(r.Header)
	switch {
	case tok == "" && p.cfg.DevMode:
		d.Identity = DevIdentity
	case tok == "":
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "a credential is required", "", fsm.ActionAuthFailed, "missing_credential")
	case strings.HasPrefix(tok, auth.APIKeyPrefix):
		var ok bool
		if d, ok = p.apiKey(d, r, v, tok, now); !ok {
			return d
		}
	case fromHeader == hdrAPIKey:
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "malformed API key", "", fsm.ActionAuthFailed, "malformed_api_key")
	default:
		var ok bool
		if d, ok = p.jwt(d, r, v, tok, now); !ok {
			return d
		}
	}

	id := &d.Identity
	var ts *tenantState
	if id.Credential != CredentialDev {
		ts, _ = v.tenants.get(id.Tenant)
		if ts == nil || ts.tenant == nil {
			return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "the credential's tenant does not exist", id.Tenant, fsm.ActionAuthFailed, "unknown_tenant")
		}
		if ts.tenant.Status != fsm.TenantActive {
			return p.deny(d, r, now, http.StatusForbidden, CodeForbidden, "the tenant is suspended", id.Tenant, fsm.ActionPermissionDenied, "tenant_suspended")
		}
	} else if dts, ok := v.tenants.get(id.Tenant); ok {
		ts = dts
	}
	if ipd := v.ip.Check(id.Tenant, addr); !ipd.Allowed {
		return p.ipBlocked(d, r, now, id.Tenant, ipd)
	}
	perm, class := p.cfg.Routes.Match(r.Method, r.Path)
	if !id.Role.Has(perm) {
		return p.deny(d, r, now, http.StatusForbidden, CodeForbidden, "role "+string(id.Role)+" lacks the "+perm.String()+" permission",
			id.Tenant, fsm.ActionPermissionDenied, "permission")
	}
	if id.Credential != CredentialDev && !p.cfg.DevMode && ts != nil && ts.limit != nil {
		cost := 1
		if c, ok := ts.limit.RouteCosts[class]; ok && c > 0 {
			cost = c
		}
		d.Rate = p.cfg.Buckets.Allow(id.Tenant, Limit{RequestsPerMinute: ts.limit.RequestsPerMinute, Burst: ts.limit.Burst}, cost)
		if p.cfg.Counts != nil {
			p.cfg.Counts.Record(id.Tenant, cost, d.Rate.Allowed)
		}
		if !d.Rate.Allowed {
			return p.deny(d, r, now, http.StatusTooManyRequests, CodeRateLimited, "rate limit exceeded; retry later", id.Tenant, fsm.ActionRateLimitExceeded, "rate_limit")
		}
	}
	if id.Credential == CredentialAPIKey && p.cfg.Audit != nil {
		p.cfg.Audit.KeyUsed(id.Subject, now)
	}
	d.Allowed, d.Status = true, http.StatusOK
	p.stats.allowed.Add(1)
	return d
}

const (
	hdrAuthorization = "Authorization"
	hdrAPIKey        = "X-Api-Key"
)

// credential returns the presented credential: "Authorization: Bearer …"
// or "X-API-Key: …", and which header carried it.
func credential(h http.Header) (string, string) {
	if v := h[hdrAuthorization]; len(v) > 0 {
		a := v[0]
		if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
			return strings.TrimSpace(a[7:]), hdrAuthorization
		}
	}
	if v := h[hdrAPIKey]; len(v) > 0 {
		return strings.TrimSpace(v[0]), hdrAPIKey
	}
	return "", ""
}

func (p *Pipeline) apiKey(d Decision, r *Request, v *View, tok string, now time.Time) (Decision, bool) {
	k, err := auth.ParseAPIKey(tok)
	if err != nil {
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "malformed API key", "", fsm.ActionAuthFailed, "malformed_api_key"), false
	}
	rec, ok := v.keys.get(k.ID)
	if !ok {
		d.Identity = Identity{Subject: k.ID, Credential: CredentialAPIKey}
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "invalid API key", "", fsm.ActionAuthFailed, "unknown_api_key"), false
	}
	d.Identity = Identity{Tenant: rec.Tenant, Subject: rec.ID, Role: rec.Role, Credential: CredentialAPIKey, Name: rec.Name}
	if v.pepper == nil {
		return p.unavailable(d, "the edge cannot verify API keys yet"), false
	}
	if !auth.VerifyAPIKeySecret(v.pepper, k, rec.Hash) {
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "invalid API key", rec.Tenant, fsm.ActionAuthFailed, "bad_api_key_secret"), false
	}
	if !rec.RevokedAt.IsZero() {
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "the API key is revoked", rec.Tenant, fsm.ActionAuthFailed, "api_key_revoked"), false
	}
	if !rec.ExpiresAt.IsZero() && !now.Before(rec.ExpiresAt) {
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "the API key has expired", rec.Tenant, fsm.ActionAuthFailed, "api_key_expired"), false
	}
	return d, true
}

func (p *Pipeline) jwt(d Decision, r *Request, v *View, tok string, now time.Time) (Decision, bool) {
	sec := now.Unix()
	leeway := int64(p.cfg.Leeway / time.Second)
	e, ok := p.tokens.get(tok, v.keyGen, sec-leeway)
	if !ok {
		c, err := auth.Verify(tok, v.keySet, auth.VerifyOptions{Issuer: p.cfg.Issuer, Audience: p.cfg.Audience, Now: now, Leeway: p.cfg.Leeway})
		if err != nil {
			return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "invalid token", "", fsm.ActionAuthFailed, tokenReason(err)), false
		}
		e = &verifiedToken{sub: c.Subject, tenant: c.TenantID, jti: c.ID, fam: c.Family, role: c.Role,
			iat: c.IssuedAt.Unix(), exp: c.ExpiresAt.Unix(), keyGen: v.keyGen}
		p.tokens.put(tok, e, sec)
	}
	d.Identity = Identity{Tenant: e.tenant, Subject: e.sub, Role: e.role, Credential: CredentialJWT}
	if e.role == auth.RoleOperator {
		return p.deny(d, r, now, http.StatusForbidden, CodeForbidden, "operator credentials are not accepted by edges", "", fsm.ActionPermissionDenied, "operator_token"), false
	}
	if v.Revoked(e.jti) || (e.fam != "" && v.FamilyRevoked(e.fam)) {
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "the token is revoked", e.tenant, fsm.ActionAuthFailed, "token_revoked"), false
	}
	u, ok := v.User(e.tenant, e.sub)
	if !ok || u.Disabled {
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "the token's user does not exist or is disabled", e.tenant, fsm.ActionAuthFailed, "user_disabled"), false
	}
	if e.iat < u.TokensValidAfter.Unix() || u.Role != e.role {
		return p.deny(d, r, now, http.StatusUnauthorized, CodeUnauthenticated, "the token is no longer valid; sign in again", e.tenant, fsm.ActionAuthFailed, "token_invalidated"), false
	}
	return d, true
}

func tokenReason(err error) string {
	for _, c := range []struct {
		err error
		r   string
	}{{auth.ErrTokenExpired, "token_expired"}, {auth.ErrTokenSignature, "bad_signature"}, {auth.ErrUnknownKey, "unknown_key"},
		{auth.ErrKeyRetired, "key_retired"}, {auth.ErrTokenAlgorithm, "bad_algorithm"}, {auth.ErrTokenAudience, "bad_audience"},
		{auth.ErrTokenIssuer, "bad_issuer"}, {auth.ErrTokenNotYetValid, "not_yet_valid"}, {auth.ErrTokenUse, "wrong_token_use"}} {
		if errors.Is(err, c.err) {
			return c.r
		}
	}
	return "malformed_token"
}

func (p *Pipeline) unavailable(d Decision, msg string) Decision {
	p.stats.unavailable.Add(1)
	d.Status, d.Code, d.Message = http.StatusServiceUnavailable, CodeUnavailable, msg
	return d
}

func (p *Pipeline) ipBlocked(d Decision, r *Request, now time.Time, tenant string, ipd IPDecision) Decision {
	p.stats.ipBlocked.Add(1)
	d.Status, d.Code, d.Message = http.StatusForbidden, CodeForbidden, "the client address is not allowed"
	p.audit(&d, r, now, tenant, fsm.ActionIPBlocked, ipd.Reason.String(), ipd.RuleID)
	return d
}

// deny fills a denial and records its audit event.
func (p *Pipeline) deny(d Decision, r *Request, now time.Time, status int, code, msg, tenant string, action fsm.Action, reason string) Decision {
	switch status {
	case http.StatusUnauthorized:
		p.stats.unauthenticated.Add(1)
	case http.StatusTooManyRequests:
		p.stats.limited.Add(1)
	default:
		p.stats.forbidden.Add(1)
	}
	d.Status, d.Code, d.Message = status, code, msg
	p.audit(&d, r, now, tenant, action, reason, "")
	return d
}

func (p *Pipeline) audit(d *Decision, r *Request, now time.Time, tenant string, action fsm.Action, reason, rule string) {
	if p.cfg.Audit == nil {
		return
	}
	kind := fsm.PrincipalKind("anonymous")
	switch d.Identity.Credential {
	case CredentialJWT:
		kind = fsm.PrincipalUser
	case CredentialAPIKey:
		kind = fsm.PrincipalAPIKey
	case CredentialDev:
		kind = fsm.PrincipalDev
	}
	meta := map[string]string{"reason": reason}
	if rule != "" {
		meta["rule"] = rule
	}
	ip := ""
	if d.ClientIP.IsValid() {
		ip = d.ClientIP.String()
	}
	p.cfg.Audit.Record(fsm.AuditInput{Tenant: tenant, Time: now.UTC(), Action: action,
		Actor:    fsm.Actor{Kind: kind, ID: clip(d.Identity.Subject, 128), Name: clip(d.Identity.Name, 256), Role: string(d.Identity.Role)},
		Resource: clip(r.Method+" "+r.Path, 512), Outcome: fsm.OutcomeFailure, IP: ip,
		UserAgent: clip(r.Header.Get("User-Agent"), 512), RequestID: d.RequestID, Error: clip(d.Message, 1024), Metadata: meta})
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
