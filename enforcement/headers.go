package enforcement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ---- security headers ----

// SecurityHeadersConfig says which security headers responses carry. Empty
// or zero fields are omitted.
type SecurityHeadersConfig struct {
	// HSTSMaxAge > 0 sends Strict-Transport-Security (whole seconds).
	HSTSMaxAge            time.Duration
	HSTSIncludeSubdomains bool
	// HSTSPreload requires HSTSIncludeSubdomains and a max-age of at least a
	// year (the preload list's own rules), else the config is refused.
	HSTSPreload bool
	// FrameOptions is "DENY" or "SAMEORIGIN" (X-Frame-Options).
	FrameOptions string
	// NoSniff sends X-Content-Type-Options: nosniff.
	NoSniff bool
	// ContentSecurityPolicy is sent verbatim.
	ContentSecurityPolicy string
	// ReferrerPolicy is one of the W3C tokens (no-referrer, same-origin,
	// strict-origin-when-cross-origin, …).
	ReferrerPolicy string
	// XSSProtection is sent only when set: "0", "1" or "1; mode=block".
	// Modern browsers ignore the header and "0" is the current advice.
	XSSProtection string
	// KeepUpstream leaves a header alone when the response already has it
	// (set by the upstream service behind a proxying edge): the service's
	// page-specific CSP beats the edge's generic one. Default: the edge's
	// policy overwrites.
	KeepUpstream bool
}

// DefaultSecurityHeadersConfig suits API responses: HSTS for a year with
// subdomains, no framing, nosniff, a CSP that allows nothing (JSON needs
// nothing) and no referrer. An edge proxying HTML should set its own CSP or
// KeepUpstream.
func DefaultSecurityHeadersConfig() SecurityHeadersConfig {
	return SecurityHeadersConfig{
		HSTSMaxAge:            365 * 24 * time.Hour,
		HSTSIncludeSubdomains: true,
		FrameOptions:          "DENY",
		NoSniff:               true,
		ContentSecurityPolicy: "default-src 'none'; frame-ancestors 'none'",
		ReferrerPolicy:        "no-referrer",
	}
}

var referrerPolicies = []string{"no-referrer", "no-referrer-when-downgrade", "origin", "origin-when-cross-origin",
	"same-origin", "strict-origin", "strict-origin-when-cross-origin", "unsafe-url"}

// SecurityHeaders is a validated, precomputed SecurityHeadersConfig.
type SecurityHeaders struct {
	keys, vals []string
	keep       bool
}

// NewSecurityHeaders validates cfg and precomputes the header values.
func NewSecurityHeaders(cfg SecurityHeadersConfig) (*SecurityHeaders, error) {
	s := &SecurityHeaders{keep: cfg.KeepUpstream}
	add := func(k, v string) { s.keys, s.vals = append(s.keys, k), append(s.vals, v) }
	switch {
	case cfg.HSTSMaxAge < 0:
		return nil, errors.New("security headers: negative HSTS max-age")
	case cfg.HSTSMaxAge > 0:
		v := "max-age=" + strconv.FormatInt(int64(cfg.HSTSMaxAge/time.Second), 10)
		if cfg.HSTSIncludeSubdomains {
			v += "; includeSubDomains"
		}
		if cfg.HSTSPreload {
			if !cfg.HSTSIncludeSubdomains || cfg.HSTSMaxAge < 365*24*time.Hour {
				return nil, errors.New("security headers: HSTS preload needs includeSubDomains and a max-age of at least one year")
			}
			v += "; preload"
		}
		add("Strict-Transport-Security", v)
	case cfg.HSTSPreload || cfg.HSTSIncludeSubdomains:
		return nil, errors.New("security headers: HSTS options without a max-age")
	}
	switch fo := strings.ToUpper(cfg.FrameOptions); fo {
	case "":
	case "DENY", "SAMEORIGIN":
		add("X-Frame-Options", fo)
	default:
		return nil, fmt.Errorf("security headers: X-Frame-Options must be DENY or SAMEORIGIN, not %q", cfg.FrameOptions)
	}
	if cfg.NoSniff {
		add("X-Content-Type-Options", "nosniff")
	}
	if cfg.ContentSecurityPolicy != "" {
		if !validHeaderValue(cfg.ContentSecurityPolicy) {
			return nil, errors.New("security headers: Content-Security-Policy contains control characters")
		}
		add("Content-Security-Policy", strings.TrimSpace(cfg.ContentSecurityPolicy))
	}
	if rp := strings.ToLower(strings.TrimSpace(cfg.ReferrerPolicy)); rp != "" {
		if !slices.Contains(referrerPolicies, rp) {
			return nil, fmt.Errorf("security headers: unknown Referrer-Policy %q", cfg.ReferrerPolicy)
		}
		add("Referrer-Policy", rp)
	}
	switch cfg.XSSProtection {
	case "":
	case "0", "1", "1; mode=block":
		add("X-Xss-Protection", cfg.XSSProtection)
	default:
		return nil, fmt.Errorf("security headers: X-XSS-Protection must be 0, 1 or \"1; mode=block\", not %q", cfg.XSSProtection)
	}
	for i, k := range s.keys {
		s.keys[i] = http.CanonicalHeaderKey(k)
	}
	return s, nil
}

// Apply sets the headers on h.
func (s *SecurityHeaders) Apply(h http.Header) {
	for i, k := range s.keys {
		if s.keep {
			if _, ok := h[k]; ok {
				continue
			}
		}
		h[k] = []string{s.vals[i]}
	}
}

// validHeaderValue rejects control characters other than tab (no header
// injection through configuration).
func validHeaderValue(v string) bool {
	for _, c := range []byte(v) {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// ---- CORS ----

// CORSConfig is a cross-origin policy.
type CORSConfig struct {
	// AllowedOrigins are exact origins ("https://app.example.com", scheme and
	// host, with a port only if not the default) or "*" for any. "null" is
	// refused: sandboxed frames and file: pages all send it.
	AllowedOrigins []string
	// AllowedMethods a preflight may ask for; default GET, HEAD, POST.
	AllowedMethods []string
	// AllowedHeaders are the request headers a preflight may ask for
	// (case-insensitive); "*" allows any (not with credentials).
	AllowedHeaders []string
	// ExposedHeaders are response headers scripts may read.
	ExposedHeaders []string
	// AllowCredentials lets cookies and Authorization through. Never
	// combined with "*" anywhere: the config is refused.
	AllowCredentials bool
	// MaxAge lets browsers cache a preflight answer (whole seconds).
	MaxAge time.Duration
}

// CORS is a validated CORSConfig.
type CORS struct {
	anyOrigin, anyHeader, creds bool
	origins                     map[string]bool
	methods                     []string
	methodList                  string
	headers                     map[string]bool
	expose, maxAge              string
}

// CORSResult says what Apply found.
type CORSResult struct {
	// CORS is true when the request carried an Origin header.
	CORS bool
	// Preflight is true for an OPTIONS request with
	// Access-Control-Request-Method: answer it at the edge (204 when Allowed,
	// 403 otherwise) without forwarding it.
	Preflight bool
	// Allowed is true when the CORS headers were granted. A disallowed
	// actual request is still served, without them: the browser then hides
	// the response from the page (CORS is not access control).
	Allowed bool
}

// NewCORS validates cfg.
func NewCORS(cfg CORSConfig) (*CORS, error) {
	c := &CORS{creds: cfg.AllowCredentials, origins: map[string]bool{}, headers: map[string]bool{}}
	for _, o := range cfg.AllowedOrigins {
		if o == "*" {
			c.anyOrigin = true
			continue
		}
		n, err := normalizeOrigin(o)
		if err != nil {
			return nil, err
		}
		c.origins[n] = true
	}
	if c.anyOrigin && c.creds {
		return nil, errors.New("cors: allowed origin \"*\" cannot be combined with credentials; list the origins")
	}
	methods := cfg.AllowedMethods
	if len(methods) == 0 {
		methods = []string{"GET", "HEAD", "POST"}
	}
	for _, m := range methods {
		m = strings.ToUpper(strings.TrimSpace(m))
		if m == "*" || !isToken(m) {
			return nil, fmt.Errorf("cors: bad method %q (list methods; \"*\" is not accepted)", m)
		}
		if !slices.Contains(c.methods, m) {
			c.methods = append(c.methods, m)
		}
	}
	c.methodList = strings.Join(c.methods, ", ")
	for _, h := range cfg.AllowedHeaders {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "*" {
			if c.creds {
				return nil, errors.New("cors: allowed header \"*\" cannot be combined with credentials; list the headers")
			}
			c.anyHeader = true
			continue
		}
		if !isToken(h) {
			return nil, fmt.Errorf("cors: bad header name %q", h)
		}
		c.headers[h] = true
	}
	for _, h := range cfg.ExposedHeaders {
		h = strings.TrimSpace(h)
		if h == "*" && c.creds {
			return nil, errors.New("cors: exposed header \"*\" cannot be combined with credentials; list the headers")
		}
		if h != "*" && !isToken(h) {
			return nil, fmt.Errorf("cors: bad exposed header %q", h)
		}
	}
	if len(cfg.ExposedHeaders) > 0 {
		c.expose = strings.Join(cfg.ExposedHeaders, ", ")
	}
	if cfg.MaxAge < 0 {
		return nil, errors.New("cors: negative max age")
	}
	if cfg.MaxAge > 0 {
		c.maxAge = strconv.FormatInt(int64(cfg.MaxAge/time.Second), 10)
	}
	return c, nil
}

// normalizeOrigin checks that o is a bare origin and returns it in the form
// browsers send: lower case, default port dropped.
func normalizeOrigin(o string) (string, error) {
	if o == "" || strings.EqualFold(o, "null") {
		return "", fmt.Errorf("cors: origin %q is not allowed in a policy", o)
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || u.ForceQuery || strings.HasSuffix(o, "#") {
		return "", fmt.Errorf("cors: %q is not an origin (want scheme://host[:port], no path or trailing slash)", o)
	}
	host := strings.ToLower(u.Host)
	if p := u.Port(); (u.Scheme == "https" && p == "443") || (u.Scheme == "http" && p == "80") {
		host = strings.TrimSuffix(host, ":"+p)
	}
	return strings.ToLower(u.Scheme) + "://" + host, nil
}

// isToken reports whether s is an RFC 9110 token (method and header names).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// Apply evaluates a request (its method and headers) against the policy and
// sets the CORS response headers on resp. See CORSResult for what the caller
// does next. Vary is added to (never replaces) upstream's.
func (c *CORS) Apply(method string, req, resp http.Header) CORSResult {
	varyOrigin := !c.anyOrigin || c.creds
	origin := req.Get("Origin")
	if origin == "" {
		if varyOrigin {
			resp.Add("Vary", "Origin")
		}
		return CORSResult{}
	}
	res := CORSResult{CORS: true}
	reqMethod := req.Get("Access-Control-Request-Method")
	res.Preflight = method == http.MethodOptions && reqMethod != ""
	if res.Preflight {
		resp.Add("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
	} else if varyOrigin {
		resp.Add("Vary", "Origin")
	}
	if !c.anyOrigin && !c.origins[strings.ToLower(origin)] {
		return res
	}
	var reqHeaders string
	if res.Preflight {
		if !slices.Contains(c.methods, reqMethod) {
			return res
		}
		var ok bool
		if reqHeaders, ok = c.checkRequestHeaders(req.Values("Access-Control-Request-Headers")); !ok {
			return res
		}
	}
	res.Allowed = true
	if c.anyOrigin {
		resp.Set("Access-Control-Allow-Origin", "*")
	} else {
		resp.Set("Access-Control-Allow-Origin", origin)
	}
	if c.creds {
		resp.Set("Access-Control-Allow-Credentials", "true")
	}
	if res.Preflight {
		resp.Set("Access-Control-Allow-Methods", c.methodList)
		if reqHeaders != "" {
			resp.Set("Access-Control-Allow-Headers", reqHeaders)
		}
		if c.maxAge != "" {
			resp.Set("Access-Control-Max-Age", c.maxAge)
		}
	} else if c.expose != "" {
		resp.Set("Access-Control-Expose-Headers", c.expose)
	}
	return res
}

// checkRequestHeaders checks the headers a preflight asks for and returns
// them, lower-cased, for Access-Control-Allow-Headers.
func (c *CORS) checkRequestHeaders(lines []string) (string, bool) {
	var out []string
	for _, line := range lines {
		for _, h := range strings.Split(line, ",") {
			h = strings.ToLower(trimOWS(h))
			if h == "" {
				continue
			}
			if !isToken(h) || (!c.anyHeader && !c.headers[h]) {
				return "", false
			}
			out = append(out, h)
		}
	}
	return strings.Join(out, ", "), true
}

// ---- request id ----

// HeaderRequestID is the canonical form of X-Request-ID.
const HeaderRequestID = "X-Request-Id"

// maxRequestIDLen bounds an inbound request id.
const maxRequestIDLen = 128

// ValidRequestID reports whether s is 1–128 characters of [A-Za-z0-9-_.].
func ValidRequestID(s string) bool {
	if s == "" || len(s) > maxRequestIDLen {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// NewRequestID returns 128 random bits as 32 lower-case hex digits. The bits
// come from the runtime's per-thread ChaCha8 generator (seeded by the OS):
// unique and unpredictable enough for correlation, about 20× cheaper than a
// crypto/rand system call. A request id is not a secret.
func NewRequestID() string {
	const hexd = "0123456789abcdef"
	var b [32]byte
	a, c := rand.Uint64(), rand.Uint64()
	for i := range 16 {
		b[i] = hexd[(a>>(60-4*i))&0xf]
		b[16+i] = hexd[(c>>(60-4*i))&0xf]
	}
	return string(b[:])
}

// RequestID returns the request's id: a single well-formed inbound
// X-Request-ID is kept (so a caller's id follows the request through the
// edge), anything else — absent, repeated, too long, or with characters that
// could forge log lines — is replaced by a new one.
func RequestID(req http.Header) string {
	if v := req[HeaderRequestID]; len(v) == 1 && ValidRequestID(v[0]) {
		return v[0]
	}
	return NewRequestID()
}
