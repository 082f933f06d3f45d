package enforcement

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestSecurityHeadersDefault(t *testing.T) {
	s, err := NewSecurityHeaders(DefaultSecurityHeadersConfig())
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	s.Apply(h)
	want := map[string]string{
		"Strict-Transport-Security": "max-age=31536000; includeSubDomains",
		"X-Frame-Options":           "DENY",
		"X-Content-Type-Options":    "nosniff",
		"Content-Security-Policy":   "default-src 'none'; frame-ancestors 'none'",
		"Referrer-Policy":           "no-referrer",
	}
	for k, v := range want {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if len(h) != len(want) {
		t.Errorf("extra headers: %v", h)
	}
	if _, ok := h["X-Xss-Protection"]; ok {
		t.Errorf("X-XSS-Protection sent without being configured")
	}
}

func TestSecurityHeadersOptions(t *testing.T) {
	cfg := SecurityHeadersConfig{HSTSMaxAge: 2 * 365 * 24 * time.Hour, HSTSIncludeSubdomains: true, HSTSPreload: true,
		FrameOptions: "sameorigin", XSSProtection: "0", ReferrerPolicy: "Strict-Origin-When-Cross-Origin"}
	s, err := NewSecurityHeaders(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{"X-Frame-Options": {"ALLOW-FROM x"}}
	s.Apply(h)
	if h.Get("Strict-Transport-Security") != "max-age=63072000; includeSubDomains; preload" ||
		h.Get("X-Frame-Options") != "SAMEORIGIN" || h.Get("X-XSS-Protection") != "0" ||
		h.Get("Referrer-Policy") != "strict-origin-when-cross-origin" || len(h["X-Frame-Options"]) != 1 {
		t.Fatalf("headers: %v", h)
	}
	if h.Get("Content-Security-Policy") != "" || h.Get("X-Content-Type-Options") != "" {
		t.Fatalf("unconfigured headers sent: %v", h)
	}
	// KeepUpstream leaves the service's own values alone.
	cfg = DefaultSecurityHeadersConfig()
	cfg.KeepUpstream = true
	s, _ = NewSecurityHeaders(cfg)
	h = http.Header{"Content-Security-Policy": {"default-src 'self'"}}
	s.Apply(h)
	if h.Get("Content-Security-Policy") != "default-src 'self'" || h.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("KeepUpstream: %v", h)
	}
}

func TestSecurityHeadersInvalid(t *testing.T) {
	bad := []SecurityHeadersConfig{
		{HSTSMaxAge: -time.Second},
		{HSTSMaxAge: time.Hour, HSTSPreload: true, HSTSIncludeSubdomains: true}, // preload needs a year
		{HSTSMaxAge: 365 * 24 * time.Hour, HSTSPreload: true},                   // and subdomains
		{HSTSIncludeSubdomains: true},                                           // options without HSTS
		{FrameOptions: "ALLOW-FROM https://x"},
		{ReferrerPolicy: "never"},
		{XSSProtection: "1; report=x"},
		{ContentSecurityPolicy: "default-src 'self'\r\nSet-Cookie: x=1"},
	}
	for _, c := range bad {
		if _, err := NewSecurityHeaders(c); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
}

func mustCORS(t *testing.T, cfg CORSConfig) *CORS {
	t.Helper()
	c, err := NewCORS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCORSConfigInvalid(t *testing.T) {
	bad := []CORSConfig{
		{AllowedOrigins: []string{"*"}, AllowCredentials: true},
		{AllowedOrigins: []string{"null"}},
		{AllowedOrigins: []string{"https://app.example.com/"}},
		{AllowedOrigins: []string{"https://app.example.com/path"}},
		{AllowedOrigins: []string{"https://app.example.com?"}},
		{AllowedOrigins: []string{"ftp://app.example.com"}},
		{AllowedOrigins: []string{"app.example.com"}},
		{AllowedOrigins: []string{"https://user@app.example.com"}},
		{AllowedOrigins: []string{"https://a.test"}, AllowedHeaders: []string{"*"}, AllowCredentials: true},
		{AllowedOrigins: []string{"https://a.test"}, ExposedHeaders: []string{"*"}, AllowCredentials: true},
		{AllowedOrigins: []string{"https://a.test"}, AllowedMethods: []string{"*"}},
		{AllowedOrigins: []string{"https://a.test"}, AllowedHeaders: []string{"X-Bad Header"}},
		{AllowedOrigins: []string{"https://a.test"}, MaxAge: -time.Second},
	}
	for _, c := range bad {
		if _, err := NewCORS(c); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
	if n, err := normalizeOrigin("HTTPS://App.Example.com:443"); err != nil || n != "https://app.example.com" {
		t.Errorf("normalizeOrigin = %q, %v", n, err)
	}
	if n, err := normalizeOrigin("http://localhost:8080"); err != nil || n != "http://localhost:8080" {
		t.Errorf("normalizeOrigin = %q, %v", n, err)
	}
}

func corsReq(origin string, kv ...string) http.Header {
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestCORSActualRequests(t *testing.T) {
	c := mustCORS(t, CORSConfig{AllowedOrigins: []string{"https://app.example.com:443", "http://localhost:3000"},
		AllowCredentials: true, ExposedHeaders: []string{"X-Request-Id", "X-RateLimit-Remaining"}})

	resp := http.Header{"Vary": {"Accept-Encoding"}}
	r := c.Apply("GET", corsReq("https://app.example.com"), resp)
	if r != (CORSResult{CORS: true, Allowed: true}) {
		t.Fatalf("allowed origin: %+v", r)
	}
	if resp.Get("Access-Control-Allow-Origin") != "https://app.example.com" || resp.Get("Access-Control-Allow-Credentials") != "true" ||
		resp.Get("Access-Control-Expose-Headers") != "X-Request-Id, X-RateLimit-Remaining" {
		t.Fatalf("allowed origin headers: %v", resp)
	}
	if strings.Join(resp["Vary"], ",") != "Accept-Encoding,Origin" {
		t.Fatalf("Vary must be added to upstream's: %v", resp["Vary"])
	}

	resp = http.Header{}
	r = c.Apply("POST", corsReq("https://evil.example"), resp)
	if r != (CORSResult{CORS: true}) || resp.Get("Access-Control-Allow-Origin") != "" || resp.Get("Access-Control-Allow-Credentials") != "" {
		t.Fatalf("foreign origin: %+v %v", r, resp)
	}
	if resp.Get("Vary") != "Origin" {
		t.Fatalf("foreign origin without Vary: %v", resp)
	}
	// Suffix and scheme tricks do not match.
	for _, o := range []string{"https://app.example.com.evil.example", "http://app.example.com", "https://app.example.com:8443", "null"} {
		resp = http.Header{}
		if r := c.Apply("GET", corsReq(o), resp); r.Allowed || resp.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("origin %q allowed", o)
		}
	}
	// No Origin: not CORS, but caches must still key on Origin.
	resp = http.Header{}
	if r := c.Apply("GET", corsReq(""), resp); r != (CORSResult{}) || resp.Get("Vary") != "Origin" || len(resp) != 1 {
		t.Fatalf("no origin: %+v %v", r, resp)
	}
	// OPTIONS without Access-Control-Request-Method is an ordinary request.
	resp = http.Header{}
	if r := c.Apply("OPTIONS", corsReq("http://localhost:3000"), resp); r.Preflight || !r.Allowed {
		t.Fatalf("plain OPTIONS: %+v", r)
	}
}

func TestCORSWildcard(t *testing.T) {
	c := mustCORS(t, CORSConfig{AllowedOrigins: []string{"*"}, AllowedHeaders: []string{"*"}})
	resp := http.Header{}
	if r := c.Apply("GET", corsReq("https://anyone.example"), resp); !r.Allowed {
		t.Fatalf("wildcard: %+v", r)
	}
	if resp.Get("Access-Control-Allow-Origin") != "*" || resp.Get("Access-Control-Allow-Credentials") != "" || resp.Get("Vary") != "" {
		t.Fatalf("wildcard headers: %v", resp)
	}
	resp = http.Header{}
	r := c.Apply("OPTIONS", corsReq("https://anyone.example", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "X-Custom, Content-Type"), resp)
	if !r.Allowed || !r.Preflight || resp.Get("Access-Control-Allow-Headers") != "x-custom, content-type" {
		t.Fatalf("wildcard preflight: %+v %v", r, resp)
	}
}

func TestCORSPreflight(t *testing.T) {
	c := mustCORS(t, CORSConfig{AllowedOrigins: []string{"https://app.example.com"}, AllowCredentials: true,
		AllowedMethods: []string{"get", "POST", "DELETE"}, AllowedHeaders: []string{"Authorization", "Content-Type"},
		MaxAge: 10 * time.Minute})
	resp := http.Header{}
	r := c.Apply("OPTIONS", corsReq("https://app.example.com", "Access-Control-Request-Method", "DELETE",
		"Access-Control-Request-Headers", "authorization,CONTENT-TYPE"), resp)
	if r != (CORSResult{CORS: true, Preflight: true, Allowed: true}) {
		t.Fatalf("preflight: %+v", r)
	}
	want := map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Credentials": "true",
		"Access-Control-Allow-Methods":     "GET, POST, DELETE",
		"Access-Control-Allow-Headers":     "authorization, content-type",
		"Access-Control-Max-Age":           "600",
		"Vary":                             "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
	}
	for k, v := range want {
		if resp.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, resp.Get(k), v)
		}
	}
	for name, req := range map[string]http.Header{
		"method not allowed":       corsReq("https://app.example.com", "Access-Control-Request-Method", "PUT"),
		"method is case-sensitive": corsReq("https://app.example.com", "Access-Control-Request-Method", "delete"),
		"header not allowed": corsReq("https://app.example.com", "Access-Control-Request-Method", "GET",
			"Access-Control-Request-Headers", "Authorization, X-Secret"),
		"origin not allowed": corsReq("https://other.example", "Access-Control-Request-Method", "GET"),
	} {
		resp := http.Header{}
		r := c.Apply("OPTIONS", req, resp)
		if !r.Preflight || r.Allowed || resp.Get("Access-Control-Allow-Origin") != "" || resp.Get("Access-Control-Allow-Methods") != "" {
			t.Errorf("%s: %+v %v", name, r, resp)
		}
	}
}

func TestRequestID(t *testing.T) {
	for _, s := range []string{"a", "abc-DEF_123.xyz", strings.Repeat("x", 128), "6f1c0b9e-6a55-4bd1-9f0e-1c6a2b0b1f4e"} {
		if !ValidRequestID(s) {
			t.Errorf("ValidRequestID(%q) = false", s)
		}
		if got := RequestID(http.Header{HeaderRequestID: {s}}); got != s {
			t.Errorf("inbound %q replaced by %q", s, got)
		}
	}
	for _, s := range []string{"", strings.Repeat("x", 129), "a b", "a\r\nX-Evil: 1", "ü", "a/b", "a;b"} {
		if ValidRequestID(s) {
			t.Errorf("ValidRequestID(%q) = true", s)
		}
		if got := RequestID(http.Header{HeaderRequestID: {s}}); got == s || !ValidRequestID(got) {
			t.Errorf("bad inbound %q kept or replaced by a bad id %q", s, got)
		}
	}
	if got := RequestID(http.Header{HeaderRequestID: {"a", "b"}}); got == "a" || got == "b" {
		t.Errorf("repeated inbound id kept: %q", got)
	}
	seen := map[string]bool{}
	for range 10000 {
		id := NewRequestID()
		if len(id) != 32 || !ValidRequestID(id) || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("NewRequestID = %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
	}
}
