package enforcement

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestSetRateLimitHeaders(t *testing.T) {
	h := http.Header{}
	SetRateLimitHeaders(h, RateResult{Allowed: true, Limit: 600, Remaining: 42, Reset: 7})
	if h.Get("X-RateLimit-Limit") != "600" || h.Get("X-RateLimit-Remaining") != "42" || h.Get("X-RateLimit-Reset") != "7" {
		t.Fatalf("allowed headers: %v", h)
	}
	if _, ok := h["Retry-After"]; ok {
		t.Fatalf("Retry-After on an allowed response")
	}
	SetRateLimitHeaders(h, RateResult{Limit: 600, Remaining: 0, Reset: 10, RetryAfter: 3})
	if h.Get("Retry-After") != "3" || h.Get("X-RateLimit-Remaining") != "0" {
		t.Fatalf("denied headers: %v", h)
	}
	if len(h["X-Ratelimit-Limit"]) != 1 {
		t.Fatalf("header repeated: %v", h)
	}
	// A denial is never without a Retry-After of at least 1.
	SetRateLimitHeaders(h, RateResult{Limit: 600, RetryAfter: 0})
	if h.Get("Retry-After") != "1" {
		t.Fatalf("Retry-After for a zero wait: %q", h.Get("Retry-After"))
	}
	SetRateLimitHeaders(h, RateResult{Allowed: true, Limit: 600, Remaining: 1})
	if h.Get("Retry-After") != "" {
		t.Fatalf("stale Retry-After kept on an allowed response")
	}
	u := http.Header{}
	SetRateLimitHeaders(u, RateResult{Allowed: true})
	if len(u) != 0 {
		t.Fatalf("unlimited key got headers: %v", u)
	}
}

// TestRateLimitHeadersFromBuckets runs the two pieces together the way the
// middleware will: a 429 with the exact figures.
func TestRateLimitHeadersFromBuckets(t *testing.T) {
	c := NewManualClock(epoch)
	b := NewBuckets(BucketsConfig{Clock: c})
	lim := Limit{RequestsPerMinute: 20, Burst: 2} // a token every 3 s
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res := b.Allow("acme", lim, 1)
		SetRateLimitHeaders(w.Header(), res)
		if !res.Allowed {
			w.WriteHeader(http.StatusTooManyRequests)
		}
	})
	var last *httptest.ResponseRecorder
	for range 3 {
		last = httptest.NewRecorder()
		handler.ServeHTTP(last, httptest.NewRequest("GET", "/", nil))
	}
	if last.Code != 429 || last.Header().Get("Retry-After") != "3" || last.Header().Get("X-RateLimit-Reset") != "6" ||
		last.Header().Get("X-RateLimit-Limit") != "20" || last.Header().Get("X-RateLimit-Remaining") != "0" {
		t.Fatalf("429: %d %v", last.Code, last.Header())
	}
	c.Advance(2500 * time.Millisecond)
	last = httptest.NewRecorder()
	handler.ServeHTTP(last, httptest.NewRequest("GET", "/", nil))
	if last.Code != 429 || last.Header().Get("Retry-After") != "1" {
		t.Fatalf("half a second to go: %d %v", last.Code, last.Header())
	}
}
