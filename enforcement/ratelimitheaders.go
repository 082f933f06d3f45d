package enforcement

import (
	"net/http"
	"strconv"
)

// Rate-limit response headers (canonical forms, so they can be set without
// canonicalising on every request).
const (
	HeaderRateLimitLimit     = "X-Ratelimit-Limit"
	HeaderRateLimitRemaining = "X-Ratelimit-Remaining"
	HeaderRateLimitReset     = "X-Ratelimit-Reset"
	HeaderRetryAfter         = "Retry-After"
)

// SetRateLimitHeaders writes r into h: X-RateLimit-Limit (the policy's
// requests per minute), X-RateLimit-Remaining (whole tokens left on this
// edge), X-RateLimit-Reset (seconds until the bucket is full) and, when the
// request was denied, Retry-After in whole seconds, rounded up and never
// below 1 (a 429 always carries it). Nothing is written for an unlimited key
// (r.Limit == 0). An allowed response never carries Retry-After, even if h
// had one.
func SetRateLimitHeaders(h http.Header, r RateResult) {
	if r.Limit <= 0 {
		return
	}
	h[HeaderRateLimitLimit] = []string{strconv.Itoa(r.Limit)}
	h[HeaderRateLimitRemaining] = []string{strconv.Itoa(max(r.Remaining, 0))}
	h[HeaderRateLimitReset] = []string{strconv.Itoa(max(r.Reset, 0))}
	if r.Allowed {
		delete(h, HeaderRetryAfter)
		return
	}
	h[HeaderRetryAfter] = []string{strconv.Itoa(max(r.RetryAfter, 1))}
}
