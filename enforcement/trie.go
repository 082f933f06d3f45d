package enforcement

import (
	"math/bits"
	"net/netip"
	"slices"
	"sync/atomic"
)

// This file holds the prefix trie shared by the IP filter and the trusted-proxy
// set: a persistent (immutable once published) path-compressed binary trie over
// 128-bit keys. IPv4 keys occupy the top 32 bits of hi, IPv6 keys all 128 bits;
// the two families live in separate tries, so the key width is only a bound.
//
// Persistence uses the "transient" trick: every node records the edit session
// that created it. A session may mutate its own nodes in place (so a bulk build
// of 100k rules does not copy paths over and over) and copies any other node
// before changing it (so a published trie is never written again). Ending a
// session — IPFilterBuilder.Build — simply starts a new session number.

// editSeq hands out edit-session numbers; 0 is never used, so a zero node is
// owned by nobody.
var editSeq atomic.Uint64

func newEdit() uint64 { return editSeq.Add(1) }

// key is a left-aligned address: bit 0 is the most significant bit of hi.
type key struct{ hi, lo uint64 }

// keyOf converts an address (already unmapped, zone stripped) to a key and the
// family's bit length.
func keyOf(a netip.Addr) (key, uint8) {
	if a.Is4() {
		b := a.As4()
		return key{hi: uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32}, 32
	}
	b := a.As16()
	return key{hi: be64(b[:8]), lo: be64(b[8:])}, 128
}

func be64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// bit returns bit i (0 = most significant) of k; i < 128.
func (k key) bit(i uint8) int {
	if i < 64 {
		return int(k.hi>>(63-i)) & 1
	}
	return int(k.lo>>(127-i)) & 1
}

// masked keeps the first n bits of k.
func (k key) masked(n uint8) key {
	switch {
	case n == 0:
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

// common is the length of the common prefix of a and b (128 when equal).
func common(a, b key) uint8 {
	if x := a.hi ^ b.hi; x != 0 {
		return uint8(bits.LeadingZeros64(x))
	}
	return 64 + uint8(bits.LeadingZeros64(a.lo^b.lo))
}

// node is one trie node. A node with no ids is an internal branching node and
// then always has two children (the trie stays path-compressed). ids holds the
// ids of the rules whose prefix is exactly this node's, sorted, so the reported
// rule is deterministic when several rules name the same prefix.
type node struct {
	k     key
	plen  uint8
	edit  uint64
	ids   []string
	child [2]*node
}

// own returns n itself when the session owns it, else a copy owned by it.
func (n *node) own(edit uint64) *node {
	if n.edit == edit {
		return n
	}
	c := *n
	c.edit = edit
	return &c
}

// matches reports whether the first n.plen bits of k equal n's prefix.
func (n *node) matches(k key) bool {
	p := n.plen
	switch {
	case p == 0:
		return true
	case p <= 64:
		return (k.hi^n.k.hi)&^(^uint64(0)>>p) == 0
	default:
		return k.hi == n.k.hi && (k.lo^n.k.lo)&^(^uint64(0)>>(p-64)) == 0
	}
}

// lookup returns the node of the longest prefix with rules that contains k, or
// nil. full is the family's bit length (32 or 128).
func lookup(n *node, k key, full uint8) *node {
	var best *node
	for n != nil && n.matches(k) {
		if len(n.ids) != 0 {
			best = n
		}
		if n.plen >= full {
			break
		}
		n = n.child[k.bit(n.plen)]
	}
	return best
}

// contains reports whether any prefix in the trie contains k. It stops at the
// first (shortest) match.
func contains(n *node, k key, full uint8) bool {
	for n != nil && n.matches(k) {
		if len(n.ids) != 0 {
			return true
		}
		if n.plen >= full {
			return false
		}
		n = n.child[k.bit(n.plen)]
	}
	return false
}

func withID(ids []string, id string) []string {
	i, found := slices.BinarySearch(ids, id)
	if found {
		return ids
	}
	// Never append into a slice that a published node may share.
	out := make([]string, 0, len(ids)+1)
	out = append(out, ids[:i]...)
	out = append(out, id)
	return append(out, ids[i:]...)
}

// insert adds id under prefix (k, plen) — k already masked — and returns the
// new root. Nodes not owned by edit are copied, never written.
func insert(n *node, k key, plen uint8, id string, edit uint64) *node {
	if n == nil {
		return &node{k: k, plen: plen, edit: edit, ids: []string{id}}
	}
	c := min(common(n.k, k), n.plen, plen)
	switch {
	case c == n.plen && c == plen: // same prefix
		ids := withID(n.ids, id)
		if len(ids) == len(n.ids) {
			return n
		}
		m := n.own(edit)
		m.ids = ids
		return m
	case c == n.plen: // n is an ancestor of the new prefix
		b := k.bit(n.plen)
		ch := insert(n.child[b], k, plen, id, edit)
		if ch == n.child[b] {
			return n
		}
		m := n.own(edit)
		m.child[b] = ch
		return m
	case c == plen: // the new prefix is an ancestor of n
		nn := &node{k: k, plen: plen, edit: edit, ids: []string{id}}
		nn.child[n.k.bit(plen)] = n
		return nn
	default: // they diverge at bit c
		in := &node{k: k.masked(c), plen: c, edit: edit}
		in.child[k.bit(c)] = &node{k: k, plen: plen, edit: edit, ids: []string{id}}
		in.child[n.k.bit(c)] = n
		return in
	}
}

// remove deletes id from prefix (k, plen) and returns the new root and whether
// anything was removed. Nodes left without rules and with fewer than two
// children are spliced out.
func remove(n *node, k key, plen uint8, id string, edit uint64) (*node, bool) {
	if n == nil || n.plen > plen || min(common(n.k, k), plen) < n.plen {
		return n, false
	}
	if n.plen == plen {
		i, found := slices.BinarySearch(n.ids, id)
		if !found {
			return n, false
		}
		if len(n.ids) > 1 {
			m := n.own(edit)
			m.ids = slices.Delete(slices.Clone(n.ids), i, i+1)
			return m, true
		}
		switch {
		case n.child[0] != nil && n.child[1] != nil:
			m := n.own(edit)
			m.ids = nil
			return m, true
		case n.child[0] != nil:
			return n.child[0], true
		default:
			return n.child[1], true
		}
	}
	b := k.bit(n.plen)
	ch, ok := remove(n.child[b], k, plen, id, edit)
	if !ok {
		return n, false
	}
	if ch == nil && len(n.ids) == 0 {
		// An internal node left with one child is replaced by that child.
		return n.child[1-b], true
	}
	m := n.own(edit)
	m.child[b] = ch
	return m, true
}

// walk calls fn for every node that carries rules, in prefix order.
func walk(n *node, fn func(*node)) {
	if n == nil {
		return
	}
	if len(n.ids) != 0 {
		fn(n)
	}
	walk(n.child[0], fn)
	walk(n.child[1], fn)
}

// prefixSet is an immutable set of prefixes (v4 and v6) answering "is this
// address inside any of them" in O(prefix length). Used for trusted proxies.
type prefixSet struct {
	v4, v6 *node
	n      int
}

func newPrefixSet(prefixes []netip.Prefix) (prefixSet, error) {
	var s prefixSet
	edit := newEdit()
	for _, p := range prefixes {
		cp, err := canonicalPrefix(p)
		if err != nil {
			return prefixSet{}, err
		}
		k, _ := keyOf(cp.Addr())
		if cp.Addr().Is4() {
			s.v4 = insert(s.v4, k, uint8(cp.Bits()), "", edit)
		} else {
			s.v6 = insert(s.v6, k, uint8(cp.Bits()), "", edit)
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
	k, full := keyOf(a)
	if full == 32 {
		return contains(s.v4, k, 32)
	}
	return contains(s.v6, k, 128)
}
