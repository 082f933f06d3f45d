package enforcement

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrInvalidCIDR is wrapped by every error ParseCIDR returns.
var ErrInvalidCIDR = errors.New("invalid CIDR")

// maxCIDRLen bounds the input; the longest valid form,
// "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128", has 49 characters.
const maxCIDRLen = 64

// ParseCIDR parses an IP rule's address range and returns it in canonical form.
//
// Accepted: "203.0.113.0/24", "2001:db8::/32", and a bare address, which means
// a single host ("203.0.113.7" → 203.0.113.7/32, "2001:db8::1" → /128).
// Surrounding spaces are trimmed.
//
// Canonical form: IPv4-mapped IPv6 ranges of length ≥ 96 become the IPv4 range
// they denote ("::ffff:10.0.0.0/104" → 10.0.0.0/8), because the filter looks
// clients up by their unmapped address; IPv6 ranges are otherwise kept as
// given, so "::/0" covers IPv6 clients only.
//
// Rejected, each with its own message (all wrap ErrInvalidCIDR): empty or over-
// long input, zones ("fe80::1%eth0"), leading zeros ("010.0.0.1", ambiguous
// between octal and decimal), a prefix length out of range, and host bits set
// ("203.0.113.7/24"). Host bits are an error rather than silently masked: an
// operator who types 203.0.113.7/24 meaning "block one host" must not block 256
// addresses without being told; the error names the masked range to use.
// (IPFilterBuilder.Add, which loads rules already in the replicated state,
// masks instead of failing, so a rule written by an older validator still
// loads.)
func ParseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return netip.Prefix{}, fmt.Errorf("%w: empty", ErrInvalidCIDR)
	}
	if len(s) > maxCIDRLen {
		return netip.Prefix{}, fmt.Errorf("%w: longer than %d characters", ErrInvalidCIDR, maxCIDRLen)
	}
	if strings.IndexByte(s, '%') >= 0 {
		return netip.Prefix{}, fmt.Errorf("%w: %q: zones are not allowed in IP rules", ErrInvalidCIDR, s)
	}
	var p netip.Prefix
	if i := strings.IndexByte(s, '/'); i >= 0 {
		l := s[i+1:]
		if l == "" || len(l) > 3 || (len(l) > 1 && l[0] == '0') || strings.Trim(l, "0123456789") != "" {
			return netip.Prefix{}, fmt.Errorf("%w: %q: bad prefix length %q", ErrInvalidCIDR, s, l)
		}
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%w: %q: %s", ErrInvalidCIDR, s, cleanNetipErr(err, s))
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%w: %q: %s", ErrInvalidCIDR, s, cleanNetipErr(err, s))
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%w: %q has host bits set (did you mean %s?)", ErrInvalidCIDR, s, m)
	}
	return unmapPrefix(p), nil
}

// cleanNetipErr strips netip's restatement of the input (ParseCIDR already
// quotes it), keeping the reason.
func cleanNetipErr(err error, s string) string {
	msg := err.Error()
	q := strconv.Quote(s) + "): "
	for _, pre := range []string{"netip.ParsePrefix(", "ParseAddr("} {
		if strings.HasPrefix(msg, pre+q) {
			return msg[len(pre+q):]
		}
	}
	return msg
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix of length ≥ 96 into IPv4.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// canonicalPrefix is the lenient normalisation used when loading rules: zone
// dropped, host bits masked, IPv4-mapped ranges unmapped. Only an invalid
// prefix is an error.
func canonicalPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%w: invalid prefix %s", ErrInvalidCIDR, p)
	}
	p = netip.PrefixFrom(p.Addr().WithZone(""), p.Bits()).Masked()
	return unmapPrefix(p), nil
}

// normAddr prepares a client address for lookup: zone dropped, IPv4-mapped IPv6
// unmapped to IPv4.
func normAddr(a netip.Addr) netip.Addr {
	return a.WithZone("").Unmap()
}
