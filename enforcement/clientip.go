package enforcement

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// ErrNoClientAddr means the connection's own address could not be parsed (for
// example a Unix socket peer); the IP filter then fails closed whenever a rule
// applies.
var ErrNoClientAddr = errors.New("client address unknown")

// maxForwardedHops bounds how many trusted X-Forwarded-For entries are walked.
const maxForwardedHops = 32

const (
	hdrXFF     = "X-Forwarded-For"
	hdrXRealIP = "X-Real-Ip" // canonical form of X-Real-IP
)

// ClientIPResolver derives a request's client address from the connection's
// address and, only when the connection comes from a trusted proxy, from the
// X-Forwarded-For / X-Real-IP headers that proxy set.
//
// The rules:
//
//  1. RemoteAddr is parsed ("ip:port", "[v6]:port" or a bare address). If it is
//     not a trusted proxy, it is the client and every forwarding header is
//     ignored: anyone can send X-Forwarded-For, so believing it from an
//     untrusted peer would let a client choose its own address.
//  2. Otherwise X-Forwarded-For is walked from the right — all header lines,
//     last line first, as one comma-separated list — skipping addresses that
//     are trusted proxies. The first untrusted address is the client: it is
//     the peer that the outermost trusted proxy saw, and entries further left
//     were written by the client and cannot be believed.
//  3. An entry that is not an address ("unknown", an obfuscated identifier,
//     garbage) ends the walk, and the client is the last trusted hop reached:
//     nothing to the left of such an entry can be attributed. Empty entries
//     (", ,") are skipped. If every entry is trusted, the leftmost is the
//     client (a request from inside the trusted network); after 32 trusted
//     entries the walk stops at the 32nd.
//  4. If there is no X-Forwarded-For entry, a single well-formed X-Real-IP
//     from a trusted proxy is the client; several X-Real-IP lines are
//     ambiguous and ignored.
//  5. Otherwise the trusted proxy's own address is the client.
//
// Entries may be "1.2.3.4", "1.2.3.4:80", "2001:db8::1", "[2001:db8::1]" or
// "[2001:db8::1]:443"; zones are dropped and IPv4-mapped IPv6 addresses are
// unmapped, here and when matching trusted prefixes. The Forwarded header
// (RFC 7239) is not read.
//
// A resolver is immutable and safe for concurrent use.
type ClientIPResolver struct {
	trusted   prefixSet
	noXRealIP bool
}

// NewClientIPResolver returns a resolver trusting the given proxy prefixes
// (host bits are masked). With none, the connection's address is always the
// client.
func NewClientIPResolver(trustedProxies []netip.Prefix) (*ClientIPResolver, error) {
	s, err := newPrefixSet(trustedProxies)
	if err != nil {
		return nil, fmt.Errorf("trusted proxies: %w", err)
	}
	return &ClientIPResolver{trusted: s}, nil
}

// ParseTrustedProxies parses a list of CIDRs or addresses strictly (see
// ParseCIDR), for flags and configuration files.
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if strings.TrimSpace(s) == "" {
			continue
		}
		p, err := ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy: %w", err)
		}
		out = append(out, p)
	}
	return out, nil
}

// IgnoreXRealIP makes the resolver use X-Forwarded-For only.
func (r *ClientIPResolver) IgnoreXRealIP() *ClientIPResolver {
	c := *r
	c.noXRealIP = true
	return &c
}

// Trusted reports whether a is a trusted proxy.
func (r *ClientIPResolver) Trusted(a netip.Addr) bool {
	return r.trusted.contains(normAddr(a))
}

// FromRequest resolves the client address of req.
func (r *ClientIPResolver) FromRequest(req *http.Request) (netip.Addr, error) {
	return r.Resolve(req.RemoteAddr, req.Header)
}

// Resolve applies the rules on ClientIPResolver to a connection address and
// request headers. The error is ErrNoClientAddr when remoteAddr is unusable.
func (r *ClientIPResolver) Resolve(remoteAddr string, h http.Header) (netip.Addr, error) {
	remote, err := ParseRemoteAddr(remoteAddr)
	if err != nil {
		return netip.Addr{}, err
	}
	if r.trusted.n == 0 || !r.trusted.contains(remote) {
		return remote, nil
	}
	cur, hops, seen := remote, 0, false
	vals := h[hdrXFF]
	for i := len(vals) - 1; i >= 0; i-- {
		v := vals[i]
		for end := len(v); end >= 0; {
			start := strings.LastIndexByte(v[:end], ',') + 1
			entry := trimOWS(v[start:end])
			end = start - 1
			if entry == "" {
				continue
			}
			seen = true
			a, ok := parseHostEntry(entry)
			if !ok {
				return cur, nil
			}
			if !r.trusted.contains(a) {
				return a, nil
			}
			cur = a
			if hops++; hops >= maxForwardedHops {
				return cur, nil
			}
		}
	}
	if seen {
		return cur, nil
	}
	if !r.noXRealIP {
		if xr := h[hdrXRealIP]; len(xr) == 1 {
			if a, ok := parseHostEntry(trimOWS(xr[0])); ok {
				return a, nil
			}
		}
	}
	return remote, nil
}

// ParseRemoteAddr parses http.Request.RemoteAddr ("ip:port", "[v6]:port", or a
// bare address as some servers and tests set it), unmapping IPv4-mapped
// addresses and dropping zones.
func ParseRemoteAddr(s string) (netip.Addr, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normAddr(ap.Addr()), nil
	}
	if a, ok := parseHostEntry(s); ok {
		return a, nil
	}
	return netip.Addr{}, fmt.Errorf("%w: remote address %.64q", ErrNoClientAddr, s)
}

// parseHostEntry parses one forwarding-header entry: an address, optionally
// with a port, IPv6 optionally in brackets.
func parseHostEntry(s string) (netip.Addr, bool) {
	if s == "" || len(s) > 64 {
		return netip.Addr{}, false
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		if rest := s[end+1:]; rest != "" && !validPort(rest) {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(s[1:end])
		if err != nil || !a.Is6() {
			return netip.Addr{}, false
		}
		return normAddr(a), true
	}
	if i := strings.IndexByte(s, ':'); i >= 0 && strings.IndexByte(s[i+1:], ':') < 0 {
		// exactly one colon: IPv4 with a port
		if !validPort(s[i:]) {
			return netip.Addr{}, false
		}
		s = s[:i]
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Addr{}, false
		}
		return a, true
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return normAddr(a), true
}

// validPort accepts ":" followed by 1–5 digits.
func validPort(s string) bool {
	if len(s) < 2 || len(s) > 6 || s[0] != ':' {
		return false
	}
	for _, c := range []byte(s[1:]) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// trimOWS trims HTTP optional whitespace (spaces and tabs).
func trimOWS(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}
