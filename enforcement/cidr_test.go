package enforcement

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseCIDRValid(t *testing.T) {
	cases := []struct{ in, want string }{
		{"203.0.113.0/24", "203.0.113.0/24"},
		{"  203.0.113.0/24\t", "203.0.113.0/24"},
		{"203.0.113.7", "203.0.113.7/32"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"2001:DB8::1", "2001:db8::1/128"},
		{"::/0", "::/0"},
		{"::1", "::1/128"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
	}
	for _, c := range cases {
		p, err := ParseCIDR(c.in)
		if err != nil {
			t.Errorf("ParseCIDR(%q): %v", c.in, err)
			continue
		}
		if p.String() != c.want {
			t.Errorf("ParseCIDR(%q) = %s, want %s", c.in, p, c.want)
		}
	}
}

func TestParseCIDRInvalid(t *testing.T) {
	cases := []struct{ in, msg string }{
		{"", "empty"},
		{"   ", "empty"},
		{"203.0.113.7/24", "host bits set (did you mean 203.0.113.0/24?)"},
		{"2001:db8::1/64", "did you mean 2001:db8::/64?"},
		{"1.2.3.4/33", "prefix length out of range"},
		{"1.2.3.4/08", "bad prefix length"},
		{"1.2.3.4/", "bad prefix length"},
		{"1.2.3.4/-1", "bad prefix length"},
		{"1.2.3.4/+8", "bad"},
		{"1.2.3.4/1234", "bad prefix length"},
		{"010.0.0.1", "leading zero"},
		{"1.2.3", "too short"},
		{"fe80::1%eth0", "zones are not allowed"},
		{"fe80::%eth0/64", "zones are not allowed"},
		{"example.com", "unexpected character"},
		{"1.2.3.4.5", "IPv4 address too long"},
		{"1.2.3.4 /24", ""},
		{strings.Repeat("1", 65), "longer than"},
	}
	for _, c := range cases {
		p, err := ParseCIDR(c.in)
		if err == nil {
			t.Errorf("ParseCIDR(%q) = %s, want an error", c.in, p)
			continue
		}
		if !errors.Is(err, ErrInvalidCIDR) {
			t.Errorf("ParseCIDR(%q) error %v does not wrap ErrInvalidCIDR", c.in, err)
		}
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ParseCIDR(%q) error %q, want it to mention %q", c.in, err, c.msg)
		}
	}
}

func TestCanonicalPrefixIsLenient(t *testing.T) {
	p, err := canonicalPrefix(netip.MustParsePrefix("203.0.113.7/24"))
	if err != nil || p.String() != "203.0.113.0/24" {
		t.Fatalf("canonicalPrefix masks host bits: got %s, %v", p, err)
	}
	p, err = canonicalPrefix(netip.MustParsePrefix("::ffff:10.1.0.0/112"))
	if err != nil || p.String() != "10.1.0.0/16" {
		t.Fatalf("canonicalPrefix unmaps: got %s, %v", p, err)
	}
	if _, err := canonicalPrefix(netip.Prefix{}); !errors.Is(err, ErrInvalidCIDR) {
		t.Fatalf("canonicalPrefix(zero) = %v, want ErrInvalidCIDR", err)
	}
}

func FuzzParseCIDR(f *testing.F) {
	for _, s := range []string{"203.0.113.0/24", "203.0.113.7", "2001:db8::/32", "::ffff:1.2.3.0/120",
		"1.2.3.4/33", "fe80::1%eth0", "0.0.0.0/0", "::/0", "1.2.3.4/08", " 10.0.0.0/8 ", "::ffff:0:0/95"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseCIDR(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidCIDR) {
				t.Fatalf("error %v does not wrap ErrInvalidCIDR", err)
			}
			if p != (netip.Prefix{}) {
				t.Fatalf("error with non-zero prefix %v", p)
			}
			return
		}
		if !p.IsValid() {
			t.Fatalf("ParseCIDR(%q) = invalid prefix", s)
		}
		if p.Masked() != p {
			t.Fatalf("ParseCIDR(%q) = %s, not masked", s, p)
		}
		if p.Addr().Zone() != "" {
			t.Fatalf("ParseCIDR(%q) = %s, has a zone", s, p)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			t.Fatalf("ParseCIDR(%q) = %s, mapped prefix not unmapped", s, p)
		}
		// Canonical: the printed form parses back to the same prefix, and the
		// lenient loader agrees with the strict parser on valid input.
		q, err := ParseCIDR(p.String())
		if err != nil || q != p {
			t.Fatalf("round trip of %q: %s → %s, %v", s, p, q, err)
		}
		if c, err := canonicalPrefix(p); err != nil || c != p {
			t.Fatalf("canonicalPrefix(%s) = %s, %v", p, c, err)
		}
		// The filter treats the rule's own network address as inside it.
		f := NewIPFilter(IPAllow)
		f, err = f.With(IPRule{ID: "r", Prefix: p, Action: IPBlock})
		if err != nil {
			t.Fatal(err)
		}
		if d := f.Check("", p.Addr()); d.Allowed || d.RuleID != "r" {
			t.Fatalf("rule %s does not match its own address: %+v", p, d)
		}
	})
}
