package enforcement

import (
	"math/bits"
	"net/netip"
	"slices"
	"sync/atomic"
)

// This file holds the prefix trie shared by the IP filter and the trusted-proxy
// set: a persistent (immutable once published) multibit trie with a stride of
// one octet, in the style of ART/poptrie:
//
//   - A node at depth d looks at octet d of the address. It holds the prefixes
//     whose length is 8d … 8d+7 in a 256-bit bitmap indexed the ART way
//     (index = 1<<r | octet>>(8-r) for r = length-8d), and up to 256 children,
//     one per value of octet d, in a second bitmap. Both arrays are popcount-
//     compressed: only present entries are stored, found by rank.
//   - A child slot holds either a deeper node or a leaf: a whole prefix (of any
//     length ≥ 8(d+1)) stored where it is alone, so sparse tails cost no chain
//     of single-child nodes (path compression).
//
// A lookup visits at most one node per octet — in practice 2–4 for 100k random
// rules, IPv4 or IPv6 — and inside a node finds the longest matching prefix
// with four AND operations against a precomputed mask. A binary trie needs one
// dependent memory load per bit (≈17 for 100k rules), which is what a lookup
// costs here: cache misses, not arithmetic.
//
// Persistence uses the "transient" trick: every node records the edit session
// that created it. A session mutates its own nodes (and their arrays) in place,
// so a bulk build of 100k rules does not copy paths over and over, and copies
// any other node before changing it, so a published trie is never written
// again. Ending a session (IPFilterBuilder.Build) just starts a new number.
// Leaves and id lists are never modified once created.

// editSeq hands out edit-session numbers; 0 is never used.
var editSeq atomic.Uint64

func newEdit() uint64 { return editSeq.Add(1) }

// key is a left-aligned address: bit 0 is the most significant bit of hi.
// IPv4 uses the top 32 bits of hi.
type key struct{ hi, lo uint64 }

// keyOf converts an address (already unmapped, zone stripped) to a key and
// reports whether it is IPv4.
func keyOf(a netip.Addr) (key, bool) {
	if a.Is4() {
		b := a.As4()
		return key{hi: uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32}, true
	}
	b := a.As16()
	return key{hi: be64(b[:8]), lo: be64(b[8:])}, false
}

func be64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// octet returns octet d (0 = most significant) of k; d < 16.
func (k key) octet(d int) uint8 {
	if d < 8 {
		return uint8(k.hi >> (56 - 8*d))
	}
	return uint8(k.lo >> (56 - 8*(d-8)))
}

// masked keeps the first n bits of k.
func (k key) masked(n int) key {
	switch {
	case n <= 0:
		return key{}
	case n < 64:
		return key{hi: k.hi &^ (^uint64(0) >> n)}
	case n == 64:
		return key{hi: k.hi}
	case n < 128:
		return key{hi: k.hi, lo: k.lo &^ (^uint64(0) >> (n - 64))}
	}
	return k
}

// withOctet returns k with octet d set to v (and nothing else changed).
func (k key) withOctet(d int, v uint8) key {
	if d < 8 {
		s := 56 - 8*d
		k.hi = k.hi&^(0xff<<s) | uint64(v)<<s
	} else {
		s := 56 - 8*(d-8)
		k.lo = k.lo&^(0xff<<s) | uint64(v)<<s
	}
	return k
}

// bitset256 is a set of octet-sized indexes.
type bitset256 [4]uint64

func (b *bitset256) test(i uint8) bool { return b[i>>6]&(1<<(i&63)) != 0 }
func (b *bitset256) set(i uint8)       { b[i>>6] |= 1 << (i & 63) }
func (b *bitset256) clear(i uint8)     { b[i>>6] &^= 1 << (i & 63) }
func (b *bitset256) empty() bool       { return b[0]|b[1]|b[2]|b[3] == 0 }

// rank is the number of members below i: the position of i in the compressed array.
func (b *bitset256) rank(i uint8) int {
	w := int(i >> 6)
	n := bits.OnesCount64(b[w] & (1<<(i&63) - 1))
	for j := range w {
		n += bits.OnesCount64(b[j])
	}
	return n
}

func (b *bitset256) count() int {
	return bits.OnesCount64(b[0]) + bits.OnesCount64(b[1]) + bits.OnesCount64(b[2]) + bits.OnesCount64(b[3])
}

// highestAnd returns the largest member of b ∩ m, or -1.
func (b *bitset256) highestAnd(m *bitset256) int {
	for w := 3; w >= 0; w-- {
		if x := b[w] & m[w]; x != 0 {
			return w*64 + 63 - bits.LeadingZeros64(x)
		}
	}
	return -1
}

// pfxIndex is the ART index of the prefix of relative length r (0–7) whose
// octet is o (host bits ignored).
func pfxIndex(o uint8, r int) uint8 { return uint8(1<<r | int(o)>>(8-r)) }

// lpmMask[o] holds the indexes of every prefix (relative length 0–7) that
// contains octet o.
var lpmMask = func() (t [256]bitset256) {
	for o := range 256 {
		for r := range 8 {
			t[o].set(pfxIndex(uint8(o), r))
		}
	}
	return t
}()

// leaf is a whole prefix with the ids of its rules (sorted). Immutable.
type leaf struct {
	k    key
	plen int
	ids  []string
}

func (l *leaf) contains(k key) bool {
	p := l.plen
	switch {
	case p == 0:
		return true
	case p <= 64:
		return (k.hi^l.k.hi)&^(^uint64(0)>>p) == 0
	default:
		return k.hi == l.k.hi && (k.lo^l.k.lo)&^(^uint64(0)>>(p-64)) == 0
	}
}

// child is one occupied child slot: exactly one of n and l is set.
type child struct {
	n *node
	l *leaf
}

// node is one stride of the trie; see the top of the file.
type node struct {
	edit uint64
	pfx  bitset256
	kids bitset256
	vals [][]string // rule ids of each prefix in pfx, in rank order
	kidv []child    // children in kids, in rank order
}

// own returns n itself when the session owns it, else a copy (with its own
// arrays) owned by it.
func (n *node) own(edit uint64) *node {
	if n.edit == edit {
		return n
	}
	return &node{edit: edit, pfx: n.pfx, kids: n.kids, vals: slices.Clone(n.vals), kidv: slices.Clone(n.kidv)}
}

// lookup returns the ids of the longest prefix in the trie containing k, or nil.
func lookup(n *node, k key) []string {
	var best []string
	for d := 0; n != nil; d++ {
		o := k.octet(d)
		if i := n.pfx.highestAnd(&lpmMask[o]); i >= 0 {
			best = n.vals[n.pfx.rank(uint8(i))]
		}
		if !n.kids.test(o) {
			break
		}
		c := n.kidv[n.kids.rank(o)]
		if c.l != nil {
			if c.l.contains(k) {
				best = c.l.ids
			}
			break
		}
		n = c.n
	}
	return best
}

// mergeIDs returns the sorted union of two sorted id lists, reusing a when b
// adds nothing. It never writes into either.
func mergeIDs(a, b []string) []string {
	out := a
	for _, id := range b {
		i, found := slices.BinarySearch(out, id)
		if found {
			continue
		}
		n := make([]string, 0, len(out)+1)
		n = append(n, out[:i]...)
		n = append(n, id)
		out = append(n, out[i:]...)
	}
	return out
}

// withoutID returns ids without id and whether it was there. It never writes
// into ids.
func withoutID(ids []string, id string) ([]string, bool) {
	i, found := slices.BinarySearch(ids, id)
	if !found {
		return ids, false
	}
	return slices.Delete(slices.Clone(ids), i, i+1), true
}

// insert adds lf (a masked prefix and ids) to the subtrie n at depth d and
// returns the new subtrie root. lf may end up shared in the trie.
func insert(n *node, d int, lf *leaf, edit uint64) *node {
	if n == nil {
		n = &node{edit: edit}
	}
	if lf.plen < 8*(d+1) { // stored in this node
		idx := pfxIndex(lf.k.octet(d), lf.plen-8*d)
		r := n.pfx.rank(idx)
		if n.pfx.test(idx) {
			ids := mergeIDs(n.vals[r], lf.ids)
			if len(ids) == len(n.vals[r]) {
				return n
			}
			m := n.own(edit)
			m.vals[r] = ids
			return m
		}
		m := n.own(edit)
		m.pfx.set(idx)
		m.vals = slices.Insert(m.vals, r, lf.ids)
		return m
	}
	o := lf.k.octet(d)
	r := n.kids.rank(o)
	if !n.kids.test(o) {
		m := n.own(edit)
		m.kids.set(o)
		m.kidv = slices.Insert(m.kidv, r, child{l: lf})
		return m
	}
	c := n.kidv[r]
	var nc child
	switch {
	case c.n != nil:
		sub := insert(c.n, d+1, lf, edit)
		if sub == c.n {
			return n
		}
		nc = child{n: sub}
	case c.l.k == lf.k && c.l.plen == lf.plen:
		ids := mergeIDs(c.l.ids, lf.ids)
		if len(ids) == len(c.l.ids) {
			return n
		}
		nc = child{l: &leaf{k: lf.k, plen: lf.plen, ids: ids}}
	default: // two different prefixes share the slot: push both one level down
		if d+1 >= 16 {
			panic("enforcement: prefix trie deeper than an IPv6 address")
		}
		sub := insert(nil, d+1, c.l, edit)
		nc = child{n: insert(sub, d+1, lf, edit)}
	}
	m := n.own(edit)
	m.kidv[r] = nc
	return m
}

// remove deletes id from prefix (k, plen) in the subtrie n at depth d. It
// returns what should now occupy n's place — n itself, a copy, a leaf (when
// only one prefix is left below a non-root node), or nothing — and whether id
// was found.
func remove(n *node, d int, k key, plen int, id string, edit uint64) (child, bool) {
	if n == nil {
		return child{}, false
	}
	same := child{n: n}
	if plen < 8*(d+1) {
		idx := pfxIndex(k.octet(d), plen-8*d)
		if !n.pfx.test(idx) {
			return same, false
		}
		r := n.pfx.rank(idx)
		ids, found := withoutID(n.vals[r], id)
		if !found {
			return same, false
		}
		m := n.own(edit)
		if len(ids) > 0 {
			m.vals[r] = ids
		} else {
			m.pfx.clear(idx)
			m.vals = slices.Delete(m.vals, r, r+1)
		}
		return m.compact(d, k), true
	}
	o := k.octet(d)
	if !n.kids.test(o) {
		return same, false
	}
	r := n.kids.rank(o)
	c := n.kidv[r]
	var nc child
	if c.l != nil {
		if c.l.k != k || c.l.plen != plen {
			return same, false
		}
		ids, found := withoutID(c.l.ids, id)
		if !found {
			return same, false
		}
		if len(ids) > 0 {
			nc = child{l: &leaf{k: k, plen: plen, ids: ids}}
		}
	} else {
		var found bool
		if nc, found = remove(c.n, d+1, k, plen, id, edit); !found {
			return same, false
		}
	}
	m := n.own(edit)
	if nc.n == nil && nc.l == nil {
		m.kids.clear(o)
		m.kidv = slices.Delete(m.kidv, r, r+1)
	} else {
		m.kidv[r] = nc
	}
	return m.compact(d, k), true
}

// compact restores the path-compression invariant after a removal: an empty
// node disappears, and a non-root node holding a single prefix becomes a leaf.
// k is any key on the path to n (its first d octets are n's path).
func (n *node) compact(d int, k key) child {
	np, nk := n.pfx.count(), n.kids.count()
	switch {
	case np == 0 && nk == 0:
		return child{}
	case d == 0 || np+nk != 1:
		return child{n: n}
	case np == 1:
		idx := n.pfx.highestAnd(&bitset256{^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)})
		r := bits.Len(uint(idx)) - 1
		o := uint8((idx - 1<<r) << (8 - r))
		return child{l: &leaf{k: k.masked(8*d).withOctet(d, o), plen: 8*d + r, ids: n.vals[0]}}
	case n.kidv[0].l != nil:
		return child{l: n.kidv[0].l}
	}
	return child{n: n}
}

// walkLeaves calls fn with every prefix (as a leaf) in the subtrie; used by tests.
func walkLeaves(n *node, d int, path key, fn func(*leaf)) {
	if n == nil {
		return
	}
	for i := 1; i < 256; i++ {
		if n.pfx.test(uint8(i)) {
			r := bits.Len(uint(i)) - 1
			o := uint8((i - 1<<r) << (8 - r))
			fn(&leaf{k: path.masked(8*d).withOctet(d, o), plen: 8*d + r, ids: n.vals[n.pfx.rank(uint8(i))]})
		}
	}
	for o := range 256 {
		if !n.kids.test(uint8(o)) {
			continue
		}
		c := n.kidv[n.kids.rank(uint8(o))]
		if c.l != nil {
			fn(c.l)
		} else {
			walkLeaves(c.n, d+1, path.masked(8*d).withOctet(d, uint8(o)), fn)
		}
	}
}

// leafOf makes the leaf for a canonical prefix.
func leafOf(p netip.Prefix, ids []string) *leaf {
	k, _ := keyOf(p.Addr())
	return &leaf{k: k, plen: p.Bits(), ids: ids}
}

// prefixSet is an immutable set of prefixes (v4 and v6) answering "is this
// address inside any of them". Used for trusted proxies.
type prefixSet struct {
	v4, v6 *node
	n      int
}

func newPrefixSet(prefixes []netip.Prefix) (prefixSet, error) {
	var s prefixSet
	edit := newEdit()
	member := []string{""}
	for _, p := range prefixes {
		cp, err := canonicalPrefix(p)
		if err != nil {
			return prefixSet{}, err
		}
		if cp.Addr().Is4() {
			s.v4 = insert(s.v4, 0, leafOf(cp, member), edit)
		} else {
			s.v6 = insert(s.v6, 0, leafOf(cp, member), edit)
		}
		s.n++
	}
	return s, nil
}

// contains reports whether a (unmapped, zone stripped) is in the set.
func (s *prefixSet) contains(a netip.Addr) bool {
	if s.n == 0 || !a.IsValid() {
		return false
	}
	k, v4 := keyOf(a)
	if v4 {
		return lookup(s.v4, k) != nil
	}
	return lookup(s.v6, k) != nil
}
