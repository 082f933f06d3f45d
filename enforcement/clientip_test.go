package enforcement

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

func resolver(t testing.TB, trusted ...string) *ClientIPResolver {
	t.Helper()
	ps, err := ParseTrustedProxies(trusted)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewClientIPResolver(ps)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestClientIP(t *testing.T) {
	r := resolver(t, "10.0.0.0/8", "fd00::/8", "192.0.2.1")
	type tc struct {
		name   string
		remote string
		xff    []string
		xreal  []string
		want   string
	}
	cases := []tc{
		{"no proxy, no headers", "203.0.113.5:4711", nil, nil, "203.0.113.5"},
		{"untrusted peer: XFF ignored (spoofing)", "203.0.113.5:4711", []string{"1.1.1.1"}, nil, "203.0.113.5"},
		{"untrusted peer: X-Real-IP ignored", "203.0.113.5:4711", nil, []string{"1.1.1.1"}, "203.0.113.5"},
		{"untrusted peer claiming a trusted hop", "203.0.113.5:4711", []string{"1.1.1.1, 10.0.0.9"}, nil, "203.0.113.5"},
		{"one trusted proxy", "10.0.0.2:80", []string{"198.51.100.4"}, nil, "198.51.100.4"},
		{"client-supplied XFF prefix is skipped", "10.0.0.2:80", []string{"6.6.6.6, 198.51.100.4"}, nil, "198.51.100.4"},
		{"spoofed trusted address left of the real client", "10.0.0.2:80", []string{"10.9.9.9, 198.51.100.4"}, nil, "198.51.100.4"},
		{"chain of trusted proxies", "10.0.0.2:80", []string{"198.51.100.4, 10.1.1.1, 192.0.2.1"}, nil, "198.51.100.4"},
		{"multiple header lines, last line is rightmost", "10.0.0.2:80", []string{"6.6.6.6, 198.51.100.4", "10.3.3.3"}, nil, "198.51.100.4"},
		{"multiple header lines, client in the last line", "10.0.0.2:80", []string{"6.6.6.6", "198.51.100.4"}, nil, "198.51.100.4"},
		{"whitespace and empty entries", "10.0.0.2:80", []string{" 6.6.6.6 ,\t198.51.100.4 , ,"}, nil, "198.51.100.4"},
		{"garbage left of the client is never reached", "10.0.0.2:80", []string{"<script>, unknown, 198.51.100.4"}, nil, "198.51.100.4"},
		{"garbage as the rightmost entry stops at the proxy", "10.0.0.2:80", []string{"198.51.100.4, unknown"}, nil, "10.0.0.2"},
		{"garbage after trusted hops stops at the last trusted hop", "10.0.0.2:80", []string{"198.51.100.4, _hidden, 10.1.1.1"}, nil, "10.1.1.1"},
		{"all entries trusted: leftmost", "10.0.0.2:80", []string{"10.5.5.5, 10.1.1.1"}, nil, "10.5.5.5"},
		{"v4 with port in XFF", "10.0.0.2:80", []string{"198.51.100.4:5555"}, nil, "198.51.100.4"},
		{"v6 bare in XFF", "10.0.0.2:80", []string{"2001:db8::7"}, nil, "2001:db8::7"},
		{"v6 brackets in XFF", "10.0.0.2:80", []string{"[2001:db8::7]"}, nil, "2001:db8::7"},
		{"v6 brackets and port in XFF", "10.0.0.2:80", []string{"[2001:db8::7]:443"}, nil, "2001:db8::7"},
		{"v6 zone dropped", "10.0.0.2:80", []string{"fe80::1%eth0"}, nil, "fe80::1"},
		{"mapped v4 in XFF is v4", "10.0.0.2:80", []string{"::ffff:198.51.100.4"}, nil, "198.51.100.4"},
		{"mapped trusted proxy in XFF is trusted", "10.0.0.2:80", []string{"198.51.100.4, [::ffff:10.1.1.1]:8080"}, nil, "198.51.100.4"},
		{"bad bracket is garbage", "10.0.0.2:80", []string{"198.51.100.4, [2001:db8::7"}, nil, "10.0.0.2"},
		{"v4 in brackets is garbage", "10.0.0.2:80", []string{"[198.51.100.4]"}, nil, "10.0.0.2"},
		{"bad port is garbage", "10.0.0.2:80", []string{"198.51.100.4:http"}, nil, "10.0.0.2"},
		{"v6 trusted peer", "[fd00::1]:443", []string{"2001:db8::7, fd00::2"}, nil, "2001:db8::7"},
		{"mapped trusted peer", "[::ffff:10.0.0.2]:443", []string{"198.51.100.4"}, nil, "198.51.100.4"},
		{"bare remote address", "10.0.0.2", []string{"198.51.100.4"}, nil, "198.51.100.4"},
		{"X-Real-IP from a trusted peer", "10.0.0.2:80", nil, []string{"198.51.100.4"}, "198.51.100.4"},
		{"X-Real-IP v6 with brackets", "10.0.0.2:80", nil, []string{"[2001:db8::7]"}, "2001:db8::7"},
		{"XFF wins over X-Real-IP", "10.0.0.2:80", []string{"198.51.100.4"}, []string{"6.6.6.6"}, "198.51.100.4"},
		{"several X-Real-IP lines are ambiguous", "10.0.0.2:80", nil, []string{"6.6.6.6", "198.51.100.4"}, "10.0.0.2"},
		{"garbage X-Real-IP", "10.0.0.2:80", nil, []string{"unknown"}, "10.0.0.2"},
		{"empty XFF falls back to X-Real-IP", "10.0.0.2:80", []string{" , "}, []string{"198.51.100.4"}, "198.51.100.4"},
		{"trusted peer without headers", "10.0.0.2:80", nil, nil, "10.0.0.2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range c.xff {
				h.Add("X-Forwarded-For", v)
			}
			for _, v := range c.xreal {
				h.Add("X-Real-IP", v)
			}
			got, err := r.Resolve(c.remote, h)
			if err != nil {
				t.Fatal(err)
			}
			if got != netip.MustParseAddr(c.want) {
				t.Fatalf("Resolve(%q, XFF %q, X-Real-IP %q) = %s, want %s", c.remote, c.xff, c.xreal, got, c.want)
			}
		})
	}
}

func TestClientIPNoTrustedProxies(t *testing.T) {
	r := resolver(t)
	h := http.Header{"X-Forwarded-For": {"1.1.1.1"}, "X-Real-Ip": {"2.2.2.2"}}
	if got, _ := r.Resolve("10.0.0.2:80", h); got != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("without trusted proxies headers must be ignored, got %s", got)
	}
}

func TestClientIPIgnoreXRealIP(t *testing.T) {
	r := resolver(t, "10.0.0.0/8").IgnoreXRealIP()
	h := http.Header{"X-Real-Ip": {"198.51.100.4"}}
	if got, _ := r.Resolve("10.0.0.2:80", h); got != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("X-Real-IP used although ignored: %s", got)
	}
}

func TestClientIPHopLimit(t *testing.T) {
	r := resolver(t, "10.0.0.0/8")
	v := "198.51.100.4"
	for range 40 {
		v += ", 10.0.0.1"
	}
	got, _ := r.Resolve("10.0.0.2:80", http.Header{"X-Forwarded-For": {v}})
	if got != netip.MustParseAddr("10.0.0.1") {
		t.Fatalf("walk past the hop limit: %s", got)
	}
}

func TestClientIPBadRemote(t *testing.T) {
	r := resolver(t, "10.0.0.0/8")
	for _, s := range []string{"", "@", "/tmp/sock", "example.com:80", "[::1"} {
		if a, err := r.Resolve(s, http.Header{"X-Forwarded-For": {"1.2.3.4"}}); !errors.Is(err, ErrNoClientAddr) || a.IsValid() {
			t.Errorf("Resolve(remote %q) = %s, %v; want ErrNoClientAddr", s, a, err)
		}
	}
}

func TestClientIPFromRequest(t *testing.T) {
	r := resolver(t, "192.0.2.0/24")
	req := httptest.NewRequest("GET", "/", nil) // RemoteAddr 192.0.2.1:1234
	req.Header.Set("X-Forwarded-For", "198.51.100.4")
	got, err := r.FromRequest(req)
	if err != nil || got != netip.MustParseAddr("198.51.100.4") {
		t.Fatalf("FromRequest = %s, %v", got, err)
	}
	if !r.Trusted(netip.MustParseAddr("::ffff:192.0.2.9")) || r.Trusted(netip.MustParseAddr("198.51.100.4")) {
		t.Fatalf("Trusted wrong")
	}
}

func TestParseTrustedProxiesStrict(t *testing.T) {
	if _, err := ParseTrustedProxies([]string{"10.0.0.1/8"}); err == nil {
		t.Fatalf("host bits accepted")
	}
	ps, err := ParseTrustedProxies([]string{"", " 10.0.0.0/8 ", "::1"})
	if err != nil || len(ps) != 2 {
		t.Fatalf("ParseTrustedProxies = %v, %v", ps, err)
	}
}

func FuzzClientIP(f *testing.F) {
	f.Add("10.0.0.2:80", "6.6.6.6, 198.51.100.4", "1.2.3.4")
	f.Add("[fd00::1]:443", "[2001:db8::7]:443,unknown", "")
	r := resolver(f, "10.0.0.0/8", "fd00::/8")
	f.Fuzz(func(t *testing.T, remote, xff, xreal string) {
		h := http.Header{"X-Forwarded-For": {xff}, "X-Real-Ip": {xreal}}
		a, err := r.Resolve(remote, h)
		if err != nil {
			if a.IsValid() {
				t.Fatalf("error with an address")
			}
			return
		}
		if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
			t.Fatalf("Resolve returned %v", a)
		}
		// The answer is the peer itself unless the peer is trusted.
		peer, _ := ParseRemoteAddr(remote)
		if !r.Trusted(peer) && a != peer {
			t.Fatalf("untrusted peer %s, but client %s taken from headers", peer, a)
		}
	})
}
