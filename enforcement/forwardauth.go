package enforcement

import (
	"net/http"
	"strings"
)

// Forward-auth headers that name the original request.
const (
	hdrForwardedMethod = "X-Forwarded-Method" // Traefik ForwardAuth
	hdrForwardedURI    = "X-Forwarded-Uri"    // Traefik ForwardAuth
	hdrOriginalMethod  = "X-Original-Method"  // nginx auth_request (set in the config)
	hdrOriginalURI     = "X-Original-Uri"     // nginx auth_request (set in the config)
)

// NewForwardAuth is the third front end: GET|POST prefix (default
// /v1/check) for proxies that ask an authorization service before
// forwarding. It recovers the original request from
//
//   - Traefik ForwardAuth: X-Forwarded-Method and X-Forwarded-Uri;
//   - nginx auth_request: X-Original-Method and X-Original-URI (set with
//     proxy_set_header);
//   - Envoy ext_authz (HTTP mode, path_prefix = prefix): the check request
//     itself, whose method is the original one and whose path is the prefix
//     followed by the original path;
//
// and the client address from X-Forwarded-For (or X-Real-IP) when the proxy
// is a trusted proxy. It answers 200 with the identity headers (the proxy
// copies them upstream: Traefik authResponseHeaders, nginx
// auth_request_set, Envoy allowed_upstream_headers), or the denial:
// 401/403/429/503 with the JSON error and, for 429, Retry-After and
// X-RateLimit-*. The check request's body is never read.
func NewForwardAuth(p *Pipeline, rs *Responder, prefix string) http.Handler {
	if prefix == "" {
		prefix = "/v1/check"
	}
	prefix = strings.TrimSuffix(prefix, "/")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		method, uri := originalRequest(r, prefix)
		path, _, _ := strings.Cut(uri, "?")
		path, _, _ = strings.Cut(path, "#")
		if path == "" || path[0] != '/' {
			path = "/" + path
		}
		if rs.cors != nil && method == http.MethodOptions && r.Header.Get("Origin") != "" &&
			r.Header.Get("Access-Control-Request-Method") != "" {
			// A browser's preflight carries no credential: the CORS policy
			// decides it alone.
			res := rs.cors.Apply(method, r.Header, w.Header())
			if res.Allowed {
				w.WriteHeader(http.StatusOK)
			} else {
				w.WriteHeader(http.StatusForbidden)
			}
			return
		}
		req := Request{Method: method, Path: path, RemoteAddr: r.RemoteAddr, Header: r.Header}
		d := p.Decide(&req)
		if !d.Allowed {
			rs.WriteDenial(w, &d)
			return
		}
		// The proxy copies the identity headers upstream and serves the
		// upstream's answer: security headers here would go nowhere, so an
		// allowed answer carries only what a proxy can use.
		h := w.Header()
		h[HeaderRequestID] = []string{d.RequestID}
		SetRateLimitHeaders(h, d.Rate)
		SetIdentityHeaders(h, d.Identity)
		w.WriteHeader(http.StatusOK)
	})
}

// originalRequest returns the method and request URI the proxy asks about.
func originalRequest(r *http.Request, prefix string) (method, uri string) {
	method, uri = r.Method, ""
	if m := r.Header.Get(hdrForwardedMethod); m != "" {
		method = m
	} else if m := r.Header.Get(hdrOriginalMethod); m != "" {
		method = m
	}
	method = strings.ToUpper(strings.TrimSpace(method))
	if u := r.Header.Get(hdrForwardedURI); u != "" {
		return method, u
	}
	if u := r.Header.Get(hdrOriginalURI); u != "" {
		return method, u
	}
	// Envoy: the original path follows the prefix.
	if rest, ok := strings.CutPrefix(r.URL.Path, prefix); ok && rest != "" {
		uri = rest
		if r.URL.RawQuery != "" {
			uri += "?" + r.URL.RawQuery
		}
		return method, uri
	}
	return method, "/"
}
