// Package enforcement is the edge of AllSource Guard: the code that decides,
// on every client request, whether it may reach a service.
//
// Why it exists as its own package: the control plane (a raft cluster of
// servers) is the source of truth, but it must never be on the request path.
// An edge — a net/http middleware inside a service, a reverse proxy, or a
// forward-auth endpoint for Envoy, nginx and Traefik — holds a local replica
// of the enforcement view (tenants, limits, IP rules, key hashes, public
// signing keys, revocations) and decides locally, with no network call per
// request. That keeps a decision in microseconds and keeps valid requests
// succeeding when every server is unreachable (DESIGN §5).
//
// Pipeline order: IP filter → authentication → tenant active → permission →
// rate limit → security headers and request id on the response.
//
// This package is built from small, independently tested pieces:
//
//   - IPFilter / IPFilterBuilder / ParseCIDR (ipfilter.go, cidr.go, trie.go):
//     immutable global and per-tenant allow/block CIDR rules on an
//     octet-stride prefix trie; lock-free lookups, copy-on-write updates.
//   - ClientIPResolver (clientip.go): the client address from RemoteAddr and,
//     behind trusted proxies only, X-Forwarded-For / X-Real-IP.
//   - Buckets (bucket.go) and SetRateLimitHeaders (ratelimitheaders.go):
//     per-tenant token buckets with route costs, live policy and fleet-share
//     changes, idle eviction, and the X-RateLimit-* / Retry-After headers.
//   - DemandMeter, PeerTable, ComputeShare, FleetShares (fleetshare.go): a
//     tenant's limit enforced fleet-wide by giving each edge a share of it in
//     proportion to the demand it sees, gossiped between edges. The demand
//     is read from the edge's internal/tally.Meter, which the pipeline
//     records each rate-limited request into once; the usage reports for the
//     servers' adaptive limits (threat.UsageMeter) read the same counts.
//   - SecurityHeaders, CORS, RequestID (headers.go): response hardening.
//   - Clock / ManualClock (clock.go): every time-based piece takes a clock, so
//     tests and simulations run on simulated time.
//
// The replicated view, the decision pipeline and the three front ends are
// built on these pieces.
package enforcement
