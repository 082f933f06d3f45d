package enforcement

import (
	"context"
	"encoding/json"
	"net/http"
)

// Identity headers: what an edge tells the service behind it about the
// caller. A proxying edge strips any the client sent before setting them, so
// a client can never choose its own identity.
const (
	HeaderTenantID       = "X-Tenant-Id"
	HeaderUserID         = "X-User-Id"
	HeaderRole           = "X-Role"
	HeaderCredentialType = "X-Credential-Type" // jwt, api_key or dev
	HeaderAPIKeyID       = "X-Api-Key-Id"
)

// IdentityHeaders lists the identity headers (canonical form).
var IdentityHeaders = []string{HeaderTenantID, HeaderUserID, HeaderRole, HeaderCredentialType, HeaderAPIKeyID}

// StripIdentityHeaders removes identity headers (and the cluster's internal
// headers) from h.
func StripIdentityHeaders(h http.Header) {
	for _, k := range IdentityHeaders {
		delete(h, k)
	}
	delete(h, "X-Allsource-Join-Token")
	delete(h, "X-Allsource-Forward-Token")
}

// SetIdentityHeaders writes the identity of an allowed decision into h.
func SetIdentityHeaders(h http.Header, id Identity) {
	if id.Tenant == "" && id.Subject == "" {
		return
	}
	h[HeaderTenantID] = []string{id.Tenant}
	h[HeaderUserID] = []string{id.Subject}
	h[HeaderRole] = []string{string(id.Role)}
	h[HeaderCredentialType] = []string{id.Credential}
	if id.Credential == CredentialAPIKey {
		h[HeaderAPIKeyID] = []string{id.Subject}
	}
}

// Responder decorates responses: security headers, X-Request-ID, the
// rate-limit headers, and the JSON error body of denials.
type Responder struct {
	security *SecurityHeaders
	cors     *CORS
}

// NewResponder returns a responder; either part may be nil (not applied).
func NewResponder(sec *SecurityHeaders, cors *CORS) *Responder {
	return &Responder{security: sec, cors: cors}
}

// Decorate sets the headers every answer for d carries.
func (rs *Responder) Decorate(h http.Header, d *Decision) {
	if rs.security != nil {
		rs.security.Apply(h)
	}
	h[HeaderRequestID] = []string{d.RequestID}
	SetRateLimitHeaders(h, d.Rate)
}

// CORS applies the CORS policy (nil policy: nothing) and reports whether the
// request was a preflight that has been answered.
func (rs *Responder) CORS(w http.ResponseWriter, r *http.Request) bool {
	if rs.cors == nil {
		return false
	}
	res := rs.cors.Apply(r.Method, r.Header, w.Header())
	if !res.Preflight {
		return false
	}
	if rs.security != nil {
		rs.security.Apply(w.Header())
	}
	if res.Allowed {
		w.WriteHeader(http.StatusNoContent)
	} else {
		w.WriteHeader(http.StatusForbidden)
	}
	return true
}

type errorBody struct {
	Error struct {
		Code      string `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"request_id"`
	} `json:"error"`
}

// WriteDenial answers a denied decision: its status, the decorated headers
// (a 429 always carries Retry-After and X-RateLimit-*), and
// {"error":{"code","message","request_id"}}.
func (rs *Responder) WriteDenial(w http.ResponseWriter, d *Decision) {
	h := w.Header()
	rs.Decorate(h, d)
	h["Content-Type"] = []string{"application/json"}
	h["Cache-Control"] = []string{"no-store"}
	if d.Status == http.StatusUnauthorized {
		h["Www-Authenticate"] = []string{`Bearer realm="allsource"`}
	}
	var b errorBody
	b.Error.Code, b.Error.Message, b.Error.RequestID = d.Code, d.Message, d.RequestID
	w.WriteHeader(d.Status)
	_ = json.NewEncoder(w).Encode(&b)
}

type identityKey struct{}

// WithIdentity returns ctx carrying an allowed request's identity.
func WithIdentity(ctx context.Context, d *Decision) context.Context {
	return context.WithValue(ctx, identityKey{}, d.Identity)
}

// IdentityFrom returns the identity the edge middleware attached to a
// request's context.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}
