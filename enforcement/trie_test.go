package enforcement

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestBitset256(t *testing.T) {
	var b bitset256
	for _, i := range []uint8{0, 1, 63, 64, 127, 128, 200, 255} {
		b.set(i)
	}
	if b.count() != 8 || !b.test(200) || b.test(2) {
		t.Fatalf("set/test/count wrong: %v", b)
	}
	if r := b.rank(128); r != 5 {
		t.Fatalf("rank(128) = %d, want 5", r)
	}
	if r := b.rank(255); r != 7 {
		t.Fatalf("rank(255) = %d, want 7", r)
	}
	m := bitset256{}
	m.set(64)
	m.set(127)
	if h := b.highestAnd(&m); h != 127 {
		t.Fatalf("highestAnd = %d, want 127", h)
	}
	b.clear(127)
	if h := b.highestAnd(&m); h != 64 {
		t.Fatalf("highestAnd after clear = %d, want 64", h)
	}
	if (&bitset256{}).highestAnd(&m) != -1 {
		t.Fatalf("highestAnd of empty set")
	}
}

func TestLPMMask(t *testing.T) {
	// 10.0.0.0/7 (relative length 7 at depth 0) contains octet 11 but not 12.
	idx := pfxIndex(10, 7)
	if !lpmMask[11].test(idx) || lpmMask[12].test(idx) {
		t.Fatalf("lpmMask wrong for index %d", idx)
	}
	if !lpmMask[255].test(1) || lpmMask[0].count() != 8 {
		t.Fatalf("every octet is in the /0 entry and in exactly 8 entries")
	}
}

// checkShape verifies the path-compression invariants: no empty node, and no
// non-root node holding a single prefix (it should be a leaf in its parent).
func checkShape(t *testing.T, n *node, d int) {
	t.Helper()
	if n == nil {
		return
	}
	np, nk := n.pfx.count(), n.kids.count()
	if np != len(n.vals) || nk != len(n.kidv) {
		t.Fatalf("depth %d: bitmaps and arrays disagree", d)
	}
	if d > 0 && np+nk == 0 {
		t.Fatalf("empty node at depth %d", d)
	}
	if d > 0 && np+nk == 1 && (np == 1 || n.kidv[0].l != nil) {
		t.Fatalf("uncompacted node at depth %d", d)
	}
	for _, c := range n.kidv {
		if (c.n == nil) == (c.l == nil) {
			t.Fatalf("child slot with %v/%v", c.n, c.l)
		}
		checkShape(t, c.n, d+1)
	}
}

func dumpPrefixes(n *node) []string {
	var out []string
	walkLeaves(n, 0, key{}, func(l *leaf) {
		for _, id := range l.ids {
			out = append(out, fmt.Sprintf("%x/%x/%d=%s", l.k.hi, l.k.lo, l.plen, id))
		}
	})
	slices.Sort(out)
	return out
}

// TestTrieAgainstReference inserts and removes random nested prefixes (v6, so
// every depth is used) and compares structure and lookups with a plain list.
func TestTrieAgainstReference(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for round := range 20 {
		var root *node
		type entry struct {
			p  netip.Prefix
			id string
		}
		var live []entry
		edit := newEdit()
		for step := range 600 {
			if step%97 == 0 {
				edit = newEdit() // a published version: later steps must copy
			}
			if len(live) > 0 && r.IntN(3) == 0 {
				i := r.IntN(len(live))
				e := live[i]
				k, _ := keyOf(e.p.Addr())
				c, ok := remove(root, 0, k, e.p.Bits(), e.id, edit)
				if !ok {
					t.Fatalf("remove %v %s: not found", e.p, e.id)
				}
				root = c.n
				live = slices.Delete(live, i, i+1)
			} else {
				var b [16]byte
				b[0] = 0x20
				for j := 1; j < 16; j++ {
					if r.IntN(3) == 0 {
						b[j] = byte(r.IntN(3))
					}
				}
				p := netip.PrefixFrom(netip.AddrFrom16(b), r.IntN(129)).Masked()
				id := fmt.Sprintf("id%d", r.IntN(4))
				dup := slices.ContainsFunc(live, func(e entry) bool { return e.p == p && e.id == id })
				root = insert(root, 0, leafOf(p, []string{id}), edit)
				if !dup {
					live = append(live, entry{p, id})
				}
			}
			checkShape(t, root, 0)
		}
		want := make([]string, 0, len(live))
		for _, e := range live {
			k, _ := keyOf(e.p.Addr())
			want = append(want, fmt.Sprintf("%x/%x/%d=%s", k.hi, k.lo, e.p.Bits(), e.id))
		}
		slices.Sort(want)
		if got := dumpPrefixes(root); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("round %d: trie holds\n%v\nwant\n%v", round, got, want)
		}
		for range 500 {
			var b [16]byte
			b[0] = 0x20
			for j := 1; j < 16; j++ {
				if r.IntN(3) == 0 {
					b[j] = byte(r.IntN(3))
				}
			}
			a := netip.AddrFrom16(b)
			k, _ := keyOf(a)
			bestLen, bestID := -1, ""
			for _, e := range live {
				if e.p.Contains(a) && (e.p.Bits() > bestLen || (e.p.Bits() == bestLen && e.id < bestID)) {
					bestLen, bestID = e.p.Bits(), e.id
				}
			}
			got := lookup(root, k)
			if (got == nil) != (bestLen < 0) || (got != nil && got[0] != bestID) {
				t.Fatalf("lookup(%s) = %v, want %q (len %d)", a, got, bestID, bestLen)
			}
		}
		// Removing everything leaves an empty trie.
		for _, e := range live {
			k, _ := keyOf(e.p.Addr())
			c, ok := remove(root, 0, k, e.p.Bits(), e.id, edit)
			if !ok {
				t.Fatalf("final remove of %v %s failed", e.p, e.id)
			}
			root = c.n
		}
		if root != nil {
			t.Fatalf("round %d: trie not empty after removing everything: %v", round, dumpPrefixes(root))
		}
	}
}

func TestPrefixSet(t *testing.T) {
	s, err := newPrefixSet([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"),
		netip.MustParsePrefix("::ffff:192.0.2.0/120")})
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{"10.1.2.3": true, "11.0.0.1": false, "fd12::1": true, "fe80::1": false,
		"192.0.2.9": true, "192.0.3.9": false} {
		if got := s.contains(netip.MustParseAddr(a)); got != want {
			t.Errorf("contains(%s) = %v, want %v", a, got, want)
		}
	}
	if s.contains(netip.Addr{}) {
		t.Errorf("invalid address is in the set")
	}
	if _, err := newPrefixSet([]netip.Prefix{{}}); err == nil {
		t.Errorf("invalid prefix accepted")
	}
}
