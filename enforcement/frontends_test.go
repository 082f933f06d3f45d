package enforcement

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

func frontendFixture(t *testing.T) (*fixture, *Pipeline, *Responder) {
	f := newFixture(t)
	p, _ := f.pipeline(func(c *PipelineConfig) {
		c.Resolver, _ = NewClientIPResolver([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")})
	})
	sec, _ := NewSecurityHeaders(DefaultSecurityHeadersConfig())
	cors, _ := NewCORS(CORSConfig{AllowedOrigins: []string{"https://app.example"}, AllowedHeaders: []string{"x-api-key"}})
	return f, p, NewResponder(sec, cors)
}

type errorJSON struct {
	Error struct{ Code, Message, RequestID string } `json:"error"`
}

func decodeErr(t *testing.T, body io.Reader) errorJSON {
	t.Helper()
	var e struct {
		Error struct {
			Code      string `json:"code"`
			Message   string `json:"message"`
			RequestID string `json:"request_id"`
		} `json:"error"`
	}
	if err := json.NewDecoder(body).Decode(&e); err != nil {
		t.Fatalf("denial body: %v", err)
	}
	var out errorJSON
	out.Error.Code, out.Error.Message, out.Error.RequestID = e.Error.Code, e.Error.Message, e.Error.RequestID
	return out
}

func TestMiddleware(t *testing.T) {
	f, p, rs := frontendFixture(t)
	var seen atomic.Pointer[http.Header]
	h := Middleware(p, rs, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hh := r.Header.Clone()
		seen.Store(&hh)
		id, ok := IdentityFrom(r.Context())
		if !ok || id.Tenant != "acme" {
			t.Errorf("identity in context: %+v %v", id, ok)
		}
		w.WriteHeader(http.StatusTeapot)
	}))
	rq := httptest.NewRequest("GET", "/orders", nil)
	rq.Header.Set("X-API-Key", f.key)
	rq.Header.Set("X-Tenant-Id", "evil")
	rq.Header.Set("X-Request-ID", "caller-id-1")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, rq)
	if rec.Code != http.StatusTeapot {
		t.Fatalf("status %d", rec.Code)
	}
	got := *seen.Load()
	if got.Get("X-Tenant-Id") != "acme" || got.Get("X-User-Id") != f.keyID || got.Get("X-Role") != "readonly" {
		t.Fatalf("identity headers to the service: %v", got)
	}
	if rec.Header().Get("X-Request-Id") != "caller-id-1" || rec.Header().Get("X-Content-Type-Options") != "nosniff" ||
		rec.Header().Get("Strict-Transport-Security") == "" || rec.Header().Get("X-Ratelimit-Limit") != "600" {
		t.Fatalf("response headers: %v", rec.Header())
	}
	// Denied: the service is not called, JSON error with the request id.
	seen.Store(nil)
	rq = httptest.NewRequest("GET", "/orders", nil)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, rq)
	if rec.Code != 401 || seen.Load() != nil {
		t.Fatalf("status %d, service called %v", rec.Code, seen.Load() != nil)
	}
	e := decodeErr(t, rec.Body)
	if e.Error.Code != "unauthenticated" || e.Error.RequestID == "" || e.Error.RequestID != rec.Header().Get("X-Request-Id") {
		t.Fatalf("error body %+v", e)
	}
	// CORS preflight answered without a credential.
	rq = httptest.NewRequest("OPTIONS", "/orders", nil)
	rq.Header.Set("Origin", "https://app.example")
	rq.Header.Set("Access-Control-Request-Method", "GET")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, rq)
	if rec.Code != http.StatusNoContent || rec.Header().Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Fatalf("preflight: %d %v", rec.Code, rec.Header())
	}
}

func TestRateLimitedAnswerCarriesHeaders(t *testing.T) {
	f, p, rs := frontendFixture(t)
	h := Middleware(p, rs, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	var rec *httptest.ResponseRecorder
	for range 11 {
		rq := httptest.NewRequest("GET", "/", nil)
		rq.Header.Set("X-API-Key", f.key)
		rec = httptest.NewRecorder()
		h.ServeHTTP(rec, rq)
	}
	if rec.Code != 429 {
		t.Fatalf("status %d", rec.Code)
	}
	for _, k := range []string{"Retry-After", "X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset"} {
		if rec.Header().Get(k) == "" {
			t.Fatalf("429 without %s: %v", k, rec.Header())
		}
	}
	if rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("Retry-After %q", rec.Header().Get("Retry-After"))
	}
	if e := decodeErr(t, rec.Body); e.Error.Code != "rate_limited" {
		t.Fatalf("body %+v", e)
	}
}

func TestProxy(t *testing.T) {
	f, p, rs := frontendFixture(t)
	var calls atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("X-Seen-Tenant", r.Header.Get("X-Tenant-Id"))
		w.Header().Set("X-Seen-User", r.Header.Get("X-User-Id"))
		w.Header().Set("X-Seen-Credential", r.Header.Get("X-Credential-Type"))
		w.Header().Set("X-Seen-Request", r.Header.Get("X-Request-Id"))
		w.Header().Set("X-Seen-Path", r.URL.RequestURI())
		w.Header().Set("Content-Security-Policy", "default-src 'self'")
		_, _ = io.WriteString(w, "hello")
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	edge := httptest.NewServer(NewProxy(p, rs, u, nil))
	defer edge.Close()

	rq, _ := http.NewRequest("GET", edge.URL+"/orders?x=1", nil)
	rq.Header.Set("X-API-Key", f.key)
	rq.Header.Set("X-Tenant-Id", "evil")
	rq.Header.Set("X-User-Id", "root")
	resp, err := http.DefaultClient.Do(rq)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Seen-Tenant") != "acme" || resp.Header.Get("X-Seen-User") != f.keyID ||
		resp.Header.Get("X-Seen-Credential") != "api_key" || resp.Header.Get("X-Seen-Path") != "/orders?x=1" {
		t.Fatalf("upstream saw %v", resp.Header)
	}
	if resp.Header.Get("X-Seen-Request") == "" || resp.Header.Get("X-Seen-Request") != resp.Header.Get("X-Request-Id") {
		t.Fatalf("request id not passed through: %v", resp.Header)
	}
	if got := resp.Header.Values("Content-Security-Policy"); len(got) != 1 || got[0] != "default-src 'none'; frame-ancestors 'none'" {
		t.Fatalf("security headers not applied once: %v", got)
	}
	// A denial never reaches the upstream.
	before := calls.Load()
	resp, err = http.Get(edge.URL + "/orders")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || calls.Load() != before {
		t.Fatalf("denied request: %d, upstream calls %d → %d", resp.StatusCode, before, calls.Load())
	}
	// An unreachable upstream is a 502 in the JSON error shape.
	dead, _ := url.Parse("http://127.0.0.1:1")
	edge2 := httptest.NewServer(NewProxy(p, rs, dead, nil))
	defer edge2.Close()
	rq, _ = http.NewRequest("GET", edge2.URL+"/", nil)
	rq.Header.Set("X-API-Key", f.key)
	resp, err = http.DefaultClient.Do(rq)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 502 || decodeErr(t, resp.Body).Error.Code != "unavailable" {
		t.Fatalf("dead upstream: %d", resp.StatusCode)
	}
	resp.Body.Close()
}

func TestForwardAuth(t *testing.T) {
	f, p, rs := frontendFixture(t)
	srv := httptest.NewServer(NewForwardAuth(p, rs, "/v1/check"))
	defer srv.Close()
	do := func(method, path string, kv ...string) *http.Response {
		t.Helper()
		rq, _ := http.NewRequest(method, srv.URL+path, nil)
		for i := 0; i+1 < len(kv); i += 2 {
			rq.Header.Set(kv[i], kv[i+1])
		}
		resp, err := http.DefaultClient.Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	routes, _ := ParseRouteMap("POST /admin/*=admin")
	p.cfg.Routes = routes
	for _, c := range []struct {
		name   string
		method string
		path   string
		hdr    []string
		want   int
	}{
		{"traefik allowed", "GET", "/v1/check", []string{"X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/orders?page=2", "X-API-Key", f.key}, 200},
		{"traefik admin route", "GET", "/v1/check", []string{"X-Forwarded-Method", "POST", "X-Forwarded-Uri", "/admin/users", "X-API-Key", f.key}, 403},
		{"nginx allowed", "GET", "/v1/check", []string{"X-Original-Method", "GET", "X-Original-URI", "/orders", "X-API-Key", f.key}, 200},
		{"nginx write by readonly", "GET", "/v1/check", []string{"X-Original-Method", "DELETE", "X-Original-URI", "/orders/1", "X-API-Key", f.key}, 403},
		{"envoy allowed", "GET", "/v1/check/orders/7", []string{"Authorization", "Bearer " + f.key, "X-Forwarded-For", "192.0.2.5"}, 200},
		{"envoy write", "POST", "/v1/check/admin/users", []string{"Authorization", "Bearer " + f.key}, 403},
		{"no credential", "GET", "/v1/check", []string{"X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/"}, 401},
	} {
		resp := do(c.method, c.path, c.hdr...)
		if resp.StatusCode != c.want {
			t.Errorf("%s: status %d, want %d", c.name, resp.StatusCode, c.want)
			continue
		}
		if c.want == 200 && (resp.Header.Get("X-Tenant-Id") != "acme" || resp.Header.Get("X-User-Id") != f.keyID ||
			resp.Header.Get("X-Role") != "readonly" || resp.Header.Get("X-Request-Id") == "") {
			t.Errorf("%s: identity headers %v", c.name, resp.Header)
		}
		if c.want != 200 && decodeErr(t, resp.Body).Error.Code == "" {
			t.Errorf("%s: no error code", c.name)
		}
	}
	// The client address comes from X-Forwarded-For of a trusted proxy.
	p.SetView(f.apply(f.view, 11, ruleRec("", "g", "192.0.2.0/24", "block")))
	if resp := do("GET", "/v1/check/x", "X-API-Key", f.key, "X-Forwarded-For", "192.0.2.5"); resp.StatusCode != 403 {
		t.Fatalf("blocked forwarded client: %d", resp.StatusCode)
	}
	p.SetView(f.view)
	// Rate limited: 429 with Retry-After for the proxy to relay.
	var last *http.Response
	for range 12 {
		last = do("GET", "/v1/check", "X-Forwarded-Method", "GET", "X-Forwarded-Uri", "/", "X-API-Key", f.key)
	}
	if last.StatusCode != 429 || last.Header.Get("Retry-After") == "" || !strings.HasPrefix(last.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("rate limited: %d %v", last.StatusCode, last.Header)
	}
}
