package enforcement

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allsource/guard/internal/tally"
)

// benchRules makes n rules: half global blocks spread over the whole address
// space (one large trie), half tenant rules (allow and block) over 1,000
// tenants. Prefix lengths are mostly host routes, like real blocklists.
func benchRules(n int, v6 bool) []IPRule {
	r := rand.New(rand.NewPCG(7, uint64(n)))
	rules := make([]IPRule, n)
	for i := range rules {
		var p netip.Prefix
		if v6 {
			var b [16]byte
			b[0], b[1] = 0x20, 0x01
			for j := 2; j < 16; j++ {
				b[j] = byte(r.Uint32())
			}
			bits := 128
			if r.IntN(4) == 0 {
				bits = 32 + r.IntN(97)
			}
			p = netip.PrefixFrom(netip.AddrFrom16(b), bits)
		} else {
			a := netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
			bits := 32
			if r.IntN(4) == 0 {
				bits = 8 + r.IntN(25)
			}
			p = netip.PrefixFrom(a, bits)
		}
		ru := IPRule{ID: fmt.Sprintf("rule-%07d", i), Prefix: p, Action: IPBlock}
		if i%2 == 1 {
			ru.Tenant = fmt.Sprintf("tenant-%04d", i%1000)
			if i%4 == 1 {
				ru.Action = IPAllow
			}
		}
		rules[i] = ru
	}
	return rules
}

func benchAddrs(rules []IPRule, v6 bool) []netip.Addr {
	r := rand.New(rand.NewPCG(8, 9))
	out := make([]netip.Addr, 4096)
	for i := range out {
		if i%2 == 0 { // an address inside some rule
			p := rules[r.IntN(len(rules))].Prefix.Masked()
			out[i] = p.Addr()
			continue
		}
		if v6 {
			var b [16]byte
			b[0], b[1] = 0x20, 0x01
			for j := 2; j < 16; j++ {
				b[j] = byte(r.Uint32())
			}
			out[i] = netip.AddrFrom16(b)
		} else {
			out[i] = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
		}
	}
	return out
}

func benchmarkCheck(b *testing.B, n int, v6 bool) {
	rules := benchRules(n, v6)
	f, err := NewIPFilter(IPAllow).With(rules...)
	if err != nil {
		b.Fatal(err)
	}
	addrs := benchAddrs(rules, v6)
	tenants := make([]string, 1000)
	for i := range tenants {
		tenants[i] = fmt.Sprintf("tenant-%04d", i)
	}
	b.ResetTimer()
	allowed := 0
	for i := range b.N {
		if f.Check(tenants[i%len(tenants)], addrs[i%len(addrs)]).Allowed {
			allowed++
		}
	}
	if b.N >= 1000 && (allowed == b.N || allowed == 0) {
		b.Fatalf("benchmark does not exercise both outcomes: %d of %d allowed", allowed, b.N)
	}
}

func BenchmarkIPFilterCheck(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		for _, v6 := range []bool{false, true} {
			fam := "v4"
			if v6 {
				fam = "v6"
			}
			b.Run(fmt.Sprintf("rules=%d/%s", n, fam), func(b *testing.B) { benchmarkCheck(b, n, v6) })
		}
	}
}

// BenchmarkLinearScan1k is the baseline the design rejects: a scan of 1,000
// prefixes with netip.Prefix.Contains.
func BenchmarkLinearScan1k(b *testing.B) {
	rules := benchRules(1000, false)
	addrs := benchAddrs(rules, false)
	b.ResetTimer()
	hits := 0
	for i := range b.N {
		a := addrs[i%len(addrs)]
		for _, r := range rules {
			if r.Prefix.Contains(a) {
				hits++
				break
			}
		}
	}
	_ = hits
}

// BenchmarkIPFilterRebuild builds a filter of n rules from nothing.
func BenchmarkIPFilterRebuild(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		rules := benchRules(n, false)
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			for range b.N {
				bl := NewIPFilterBuilder(IPAllow)
				for _, r := range rules {
					if err := bl.Add(r); err != nil {
						b.Fatal(err)
					}
				}
				if bl.Build().Len() != n {
					b.Fatal("wrong size")
				}
			}
		})
	}
}

// BenchmarkIPFilterIncremental adds and removes one rule on a 100k filter,
// publishing a new filter each time — the cost of one replicated change.
func BenchmarkIPFilterIncremental(b *testing.B) {
	rules := benchRules(100_000, false)
	f, err := NewIPFilter(IPAllow).With(rules...)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, tenant string }{{"global", ""}, {"tenant", "tenant-0042"}} {
		b.Run(tc.name, func(b *testing.B) {
			g := f
			for i := range b.N {
				nr := IPRule{ID: "new", Tenant: tc.tenant, Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32), Action: IPBlock}
				bl := g.Builder()
				if err := bl.Add(nr); err != nil {
					b.Fatal(err)
				}
				g = bl.Build()
				g = g.Without("new")
			}
		})
	}
}

func BenchmarkBucketAllow(b *testing.B) {
	lim := Limit{RequestsPerMinute: 1 << 30, Burst: 1 << 30} // never denies: measures the path
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("tenant-%04d", i)
	}
	b.Run("single", func(b *testing.B) {
		bk := NewBuckets(BucketsConfig{})
		for i := range b.N {
			if !bk.Allow(keys[i%len(keys)], lim, 1).Allowed {
				b.Fatal("denied")
			}
		}
	})
	b.Run("parallel/distinct-keys", func(b *testing.B) {
		bk := NewBuckets(BucketsConfig{})
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1)) * 7919
			for pb.Next() {
				bk.Allow(keys[i%len(keys)], lim, 1)
				i++
			}
		})
	})
	b.Run("parallel/one-key", func(b *testing.B) {
		bk := NewBuckets(BucketsConfig{})
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				bk.Allow("hot-tenant", lim, 1)
			}
		})
	})
	b.Run("clock-only", func(b *testing.B) { // the share of the above spent reading the clock
		var t time.Time
		for range b.N {
			t = SystemClock.Now()
		}
		_ = t
	})
}

func BenchmarkClientIP(b *testing.B) {
	ps, err := ParseTrustedProxies([]string{"10.0.0.0/8", "172.16.0.0/12", "fd00::/8"})
	if err != nil {
		b.Fatal(err)
	}
	r, err := NewClientIPResolver(ps)
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name, remote string
		h            http.Header
		want         string
	}{
		{"direct", "203.0.113.5:51234", http.Header{"X-Forwarded-For": {"1.1.1.1"}}, "203.0.113.5"},
		{"one-proxy", "10.0.0.2:51234", http.Header{"X-Forwarded-For": {"203.0.113.5"}}, "203.0.113.5"},
		{"three-hops", "10.0.0.2:51234", http.Header{"X-Forwarded-For": {"6.6.6.6, 203.0.113.5, 172.16.0.9, 10.1.1.1"}}, "203.0.113.5"},
		{"v6", "[fd00::1]:443", http.Header{"X-Forwarded-For": {"[2001:db8::7]:443, fd00::2"}}, "2001:db8::7"},
	}
	for _, c := range cases {
		want := netip.MustParseAddr(c.want)
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				a, err := r.Resolve(c.remote, c.h)
				if err != nil || a != want {
					b.Fatalf("%s, %v", a, err)
				}
			}
		})
	}
}

func BenchmarkRequestID(b *testing.B) {
	for range b.N {
		_ = NewRequestID()
	}
}

func BenchmarkDemandRecord(b *testing.B) {
	m := tally.New()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("tenant-%04d", i)
	}
	b.ResetTimer()
	for i := range b.N {
		m.Record(keys[i%len(keys)], 1, true)
	}
}
