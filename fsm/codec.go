package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"
)

// The binary codec of commands (envelope version 2) and audit records.
//
// Why: with three replicas on one machine every byte of state-machine CPU is
// paid three times, and JSON was most of it (BENCHMARKS.md). The format is a
// plain sequence of fields, no field names and no self-description:
//
//	uvarint    unsigned integers and lengths (encoding/binary)
//	varint     signed integers (zig-zag)
//	string     uvarint length, then the bytes
//	time       varint Unix seconds, uvarint nanoseconds (< 1e9); decoded in UTC
//	map        uvarint count, then key/value strings in ascending key order
//
// Decoding is strict and never panics: a length or count beyond the bytes
// left, a string that is not valid UTF-8, a nanosecond field ≥ 1e9, a map whose keys are not strictly
// ascending, or bytes left over are all errors. Lengths are checked against
// the input before anything is allocated, so a hostile input cannot make the
// decoder allocate more than about its own size.

// errBinary is the error of every malformed binary input.
var errBinary = errors.New("malformed binary encoding")

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendText is appendStr for free text that came from outside (headers,
// user agents): invalid UTF-8 is replaced as encoding/json would, so the
// binary and the JSON forms of a command carry the same text.
func appendText(b []byte, s string) []byte {
	if !utf8.ValidString(s) {
		s = toValidUTF8(s)
	}
	return appendStr(b, s)
}

// toValidUTF8 replaces each invalid byte with U+FFFD, as encoding/json does.
func toValidUTF8(s string) string {
	out := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			out = append(out, "\uFFFD"...)
		} else {
			out = append(out, s[i:i+n]...)
		}
		i += n
	}
	return string(out)
}

func appendTime(b []byte, t time.Time) []byte {
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// appendMap writes m's entries in key order (the encoding is canonical: the
// chain hash is computed over it).
func appendMap(b []byte, m map[string]string) []byte {
	b = binary.AppendUvarint(b, uint64(len(m)))
	switch len(m) {
	case 0:
		return b
	case 1:
		for k, v := range m {
			return appendText(appendText(b, k), v)
		}
	}
	var small [8]string
	keys := small[:0]
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b = appendText(appendText(b, k), m[k])
	}
	return b
}

// textArena hands out the bytes of strings that outlive a batch (the audit
// entries it appends, which changes carry to consumers) from chunks shared by
// the batch's commands: one allocation for many commands and entries instead
// of one per command and one per entry. A chunk is a strings.Builder, whose
// strings never change as it grows (and which allocates without zeroing);
// chunks are never reused. A string keeps its whole chunk alive, as an entry
// keeps the slab it is in.
type textArena struct {
	chunk strings.Builder // never copied: a textArena is only used in place
	want  int             // the size of the next chunk, at least: what is left to copy, about
}

// reserve makes sure the next n bytes come from one chunk: the current one
// when it has room, else a new one of max(n, want) bytes.
func (t *textArena) reserve(n int) {
	if t.chunk.Cap()-t.chunk.Len() < n {
		t.chunk = strings.Builder{}
		t.chunk.Grow(max(n, t.want))
	}
}

// copy returns b as a string in the arena.
func (t *textArena) copy(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	t.reserve(len(b))
	t.want = max(t.want-len(b), 0)
	n0 := t.chunk.Len()
	t.chunk.Write(b)
	return t.chunk.String()[n0:]
}

// bdec reads a binary encoding. The first error sticks: later reads return
// zero values, and err reports it.
type bdec struct {
	b   []byte
	err error
	// s, when set, holds the same bytes as b did at the start: strings are
	// then its substrings instead of one allocation each.
	s  string
	n0 int // len(b) at the start
}

func newBdec(b []byte) *bdec { return &bdec{b: b, n0: len(b)} }

// newSharedBdec is a decoder whose strings share one copy of b: one
// allocation per record or payload instead of one per string (the strings
// keep the whole copy alive).
func newSharedBdec(b []byte) *bdec { return &bdec{b: b, n0: len(b), s: string(b)} }

func (d *bdec) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", errBinary, what)
	}
	d.b = nil
}

func (d *bdec) byte1() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *bdec) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad unsigned integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *bdec) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytesN returns the next n bytes, aliasing the input.
func (d *bdec) bytesN(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length beyond the input")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// str reads a string, which must be valid UTF-8 (the encoder only writes
// valid UTF-8, so a decoded command re-encodes to the same bytes).
func (d *bdec) str() string {
	// The common case first: a short ASCII string in a shared decoder.
	if b := d.b; d.s != "" && len(b) > 0 && b[0] < 0x80 && int(b[0]) < len(b) {
		n := int(b[0])
		v := b[1 : 1+n]
		ascii := true
		for _, c := range v {
			if c >= utf8.RuneSelf {
				ascii = false
				break
			}
		}
		if ascii {
			off := d.n0 - len(b) + 1
			d.b = b[1+n:]
			return d.s[off : off+n]
		}
	}
	n := d.uvarint()
	off := d.n0 - len(d.b)
	v := d.bytesN(n)
	if !utf8.Valid(v) {
		d.fail("string is not valid UTF-8")
		return ""
	}
	if d.s != "" && d.err == nil {
		return d.s[off : off+len(v)]
	}
	return string(v)
}

func (d *bdec) time() time.Time {
	sec := d.varint()
	ns := d.uvarint()
	if ns >= 1e9 {
		d.fail("nanoseconds out of range")
		return time.Time{}
	}
	if d.err != nil {
		return time.Time{}
	}
	return time.Unix(sec, int64(ns)).UTC()
}

// count reads an element count; each element takes at least minBytes bytes,
// so a count the input cannot hold is refused before anything is allocated.
func (d *bdec) count(minBytes int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/minBytes) || n > math.MaxInt32 {
		d.fail("count beyond the input")
		return 0
	}
	return int(n)
}

func (d *bdec) strMap() map[string]string {
	n := d.count(2)
	if n == 0 {
		return nil
	}
	m := make(map[string]string, n)
	prev := ""
	for i := 0; i < n && d.err == nil; i++ {
		k, v := d.str(), d.str()
		if i > 0 && k <= prev {
			d.fail("map keys out of order")
			return nil
		}
		m[k], prev = v, k
	}
	return m
}

// done reports the first error, or leftover bytes.
func (d *bdec) done() error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	return d.err
}

// binaryPayload is a command payload with a binary encoding (envelope v2).
// NewCommand uses it when the payload has one; mustDecodePayload decodes a
// binary payload into it.
type binaryPayload interface {
	appendBinary(b []byte) []byte
	decodeBinary(d *bdec)
}

func (a *AuditInput) appendBinary(b []byte) []byte {
	b = appendText(b, a.Tenant)
	b = appendTime(b, a.Time)
	b = appendText(b, string(a.Action))
	b = appendActor(b, &a.Actor)
	b = appendText(b, a.Resource)
	b = appendText(b, string(a.Outcome))
	b = appendText(b, a.IP)
	b = appendText(b, a.UserAgent)
	b = appendText(b, a.RequestID)
	b = appendText(b, a.Error)
	return appendMap(b, a.Metadata)
}

func (a *AuditInput) decodeBinary(d *bdec) {
	a.Tenant = d.str()
	a.Time = d.time()
	a.Action = Action(d.str())
	decodeActor(d, &a.Actor)
	a.Resource = d.str()
	a.Outcome = Outcome(d.str())
	a.IP = d.str()
	a.UserAgent = d.str()
	a.RequestID = d.str()
	a.Error = d.str()
	a.Metadata = d.strMap()
}

func appendActor(b []byte, a *Actor) []byte {
	b = appendText(b, string(a.Kind))
	b = appendText(b, a.ID)
	b = appendText(b, a.Name)
	return appendText(b, a.Role)
}

func decodeActor(d *bdec, a *Actor) {
	a.Kind = PrincipalKind(d.str())
	a.ID = d.str()
	a.Name = d.str()
	a.Role = d.str()
}

// minAuditInput is the fewest bytes an encoded AuditInput takes.
const minAuditInput = 16

func (p *AppendAuditCmd) appendBinary(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p.Entries)))
	for i := range p.Entries {
		b = p.Entries[i].appendBinary(b)
	}
	return b
}

func (p *AppendAuditCmd) decodeBinary(d *bdec) {
	n := d.count(minAuditInput)
	if n == 0 {
		p.Entries = nil
		return
	}
	// Decoding into a command's slice reuses it (every field is set below).
	p.Entries = slices.Grow(p.Entries[:0], n)[:n]
	for i := range p.Entries {
		p.Entries[i].decodeBinary(d)
	}
}

func (p *LoginFailuresCmd) appendBinary(b []byte) []byte {
	b = binary.AppendVarint(b, int64(p.Policy.MaxFailures))
	b = binary.AppendVarint(b, int64(p.Policy.Window))
	b = binary.AppendVarint(b, int64(p.Policy.LockFor))
	b = binary.AppendUvarint(b, uint64(len(p.Failures)))
	for i := range p.Failures {
		f := &p.Failures[i]
		b = appendText(b, f.Tenant)
		b = appendText(b, f.Username)
		b = appendText(b, f.UserID)
		b = appendText(b, f.Reason)
		b = appendTime(b, f.Time)
		b = appendText(b, f.IP)
		b = appendText(b, f.UserAgent)
		b = appendText(b, f.RequestID)
	}
	return b
}

func (p *LoginFailuresCmd) decodeBinary(d *bdec) {
	p.Policy.MaxFailures = int(d.varint())
	p.Policy.Window = time.Duration(d.varint())
	p.Policy.LockFor = time.Duration(d.varint())
	n := d.count(9)
	if n == 0 {
		p.Failures = nil
		return
	}
	p.Failures = make([]LoginFailure, n)
	for i := range p.Failures {
		f := &p.Failures[i]
		f.Tenant = d.str()
		f.Username = d.str()
		f.UserID = d.str()
		f.Reason = d.str()
		f.Time = d.time()
		f.IP = d.str()
		f.UserAgent = d.str()
		f.RequestID = d.str()
	}
}

func (p *TouchAPIKeysCmd) appendBinary(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(p.Uses)))
	for i := range p.Uses {
		u := &p.Uses[i]
		b = appendText(b, u.ID)
		b = appendTime(b, u.LastUsed)
		b = binary.AppendUvarint(b, u.Count)
	}
	return b
}

func (p *TouchAPIKeysCmd) decodeBinary(d *bdec) {
	n := d.count(4)
	if n == 0 {
		p.Uses = nil
		return
	}
	p.Uses = make([]KeyUse, n)
	for i := range p.Uses {
		u := &p.Uses[i]
		u.ID = d.str()
		u.LastUsed = d.time()
		u.Count = d.uvarint()
	}
}
