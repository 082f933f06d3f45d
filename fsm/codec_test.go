package fsm

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// encodeV1 is the envelope of the first releases: the first byte 1, then the
// whole command as JSON. Logs written with it must still apply.
func encodeV1(t fataler, c Command) []byte {
	t.Helper()
	if c.BinPayload != nil {
		t.Fatalf("a v1 envelope has no binary payload")
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatalf("encode v1: %v", err)
	}
	return append([]byte{encodingV1}, b...)
}

// mustEncodeV1 builds a command with a JSON payload in a v1 envelope.
func mustEncodeV1(t fataler, typ CommandType, h Header, payload any) []byte {
	t.Helper()
	c := Command{Type: typ, Header: h}
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			t.Fatalf("encode payload: %v", err)
		}
		c.Payload = b
	}
	return encodeV1(t, c)
}

// hotCommands is a log exercising the commands with a binary payload, with
// the awkward values: metadata, empty and invalid UTF-8 text, times in
// another zone and before 1970.
func hotCommands(t testing.TB) []struct {
	typ     CommandType
	p       Principal
	payload any
} {
	zone := time.FixedZone("x", 5*3600+1800)
	type cmd = struct {
		typ     CommandType
		p       Principal
		payload any
	}
	var out []cmd
	out = append(out, cmd{CmdBootstrapOperator, sysP, &BootstrapOperatorCmd{Token: OperatorToken{ID: "root", Hash: strings.Repeat("ab", 32)}}},
		cmd{CmdCreateTenant, opP, &CreateTenantCmd{ID: "acme", Tier: "professional"}},
		cmd{CmdNoop, sysP, nil},
		cmd{CmdAppendAudit, sysP, &AppendAuditCmd{Entries: []AuditInput{
			{Tenant: "acme", Time: baseTime.In(zone), Action: ActionLoginFailed, Outcome: OutcomeFailure,
				Actor: Actor{Kind: PrincipalUser, ID: "u1", Name: "ann", Role: "admin"}, Resource: "user/u1",
				IP: "2001:db8::1", UserAgent: "bad \xff\xfe utf-8", RequestID: "r-1", Error: "wrong password",
				Metadata: map[string]string{"b": "2", "a": "1", "z": "", "é": "ü"}},
			{Tenant: "", Time: time.Date(1960, 1, 2, 3, 4, 5, 6, time.UTC), Action: ActionConfigChanged},
			{Tenant: "acme", Time: baseTime.Add(time.Nanosecond), Action: ActionAPIKeyUsed, Metadata: map[string]string{"only": "one"}},
		}}},
		cmd{CmdCreateUser, opP, &CreateUserCmd{Tenant: "acme", ID: strings.Repeat("a1", 16), Username: "ann",
			Role: "developer", PasswordHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"}},
		cmd{CmdLoginFailures, sysP, &LoginFailuresCmd{Policy: DefaultLockout, Failures: []LoginFailure{
			{Tenant: "acme", Username: "ann", UserID: strings.Repeat("a1", 16), Reason: "wrong password", Time: baseTime.In(zone), IP: "192.0.2.1", UserAgent: "x\x80"},
			{Tenant: "nope", Username: "bob", Reason: "unknown user", Time: baseTime.Add(time.Second)},
		}}},
	)
	return out
}

// TestV1EnvelopeAppliesLikeV2: the same commands in the JSON envelope of the
// first releases and in the binary envelope give byte-identical state.
func TestV1EnvelopeAppliesLikeV2(t *testing.T) {
	h1, h2 := newHarness(t), newHarness(t)
	for _, c := range hotCommands(t) {
		r1 := h1.applyRaw(mustEncodeV1(t, c.typ, h1.header(c.p), c.payload))
		r2 := h2.applyRaw(mustEncode(t, c.typ, h2.header(c.p), c.payload))
		if (r1.Err == nil) != (r2.Err == nil) || !reflect.DeepEqual(r1.Value, r2.Value) {
			t.Fatalf("%s: v1 result %+v, v2 result %+v", c.typ, r1, r2)
		}
		if r1.Err != nil {
			t.Fatalf("%s: %v", c.typ, r1.Err)
		}
	}
	if a, b := snapshotBytes(t, h1.f), snapshotBytes(t, h2.f); !bytes.Equal(a, b) {
		t.Fatalf("v1 and v2 logs give different state:\n%s", diffLines(dumpState(t, h1.f), dumpState(t, h2.f)))
	}
	if rep := verify(t, h2.f, "acme"); !rep.OK || rep.Entries == 0 {
		t.Fatalf("verify: %+v", rep)
	}
	// Invalid UTF-8 became U+FFFD in both encodings.
	es := allAudit(t, h2.f, "acme")
	if got := es[1].UserAgent; got != "bad \uFFFD\uFFFD utf-8" {
		t.Fatalf("user agent stored as %q", got)
	}
}

// TestCommandBinaryRoundTrip: every hot payload survives Encode → Decode.
func TestCommandBinaryRoundTrip(t *testing.T) {
	for _, c := range hotCommands(t) {
		h := Header{Principal: c.p, Time: -5, RequestID: "r", IP: "192.0.2.1", UserAgent: "ua"}
		b := mustEncode(t, c.typ, h, c.payload)
		dc, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("%s: %v", c.typ, err)
		}
		if dc.Type != c.typ || dc.Header != h {
			t.Fatalf("%s: envelope %+v", c.typ, dc)
		}
		if c.payload == nil {
			if dc.Payload != nil || dc.BinPayload != nil {
				t.Fatalf("%s: payload appeared", c.typ)
			}
			continue
		}
		_, isBin := c.payload.(binaryPayload)
		if isBin != (dc.BinPayload != nil) {
			t.Fatalf("%s: binary payload = %v, want %v", c.typ, dc.BinPayload != nil, isBin)
		}
		got := reflect.New(reflect.TypeOf(c.payload).Elem()).Interface()
		if err := decodePayload(&dc, got); err != nil {
			t.Fatalf("%s: payload: %v", c.typ, err)
		}
		// Compare through JSON: times compare as instants, invalid UTF-8 as
		// the replacement the JSON form makes.
		want, _ := json.Marshal(c.payload)
		gotJSON, _ := json.Marshal(got)
		var wv, gv any
		_ = json.Unmarshal(want, &wv)
		_ = json.Unmarshal(gotJSON, &gv)
		if !sameInstants(wv, gv) {
			t.Fatalf("%s: payload round trip\n%s\n%s", c.typ, want, gotJSON)
		}
	}
}

// sameInstants compares decoded JSON values, strings that parse as RFC 3339
// times by instant.
func sameInstants(a, b any) bool {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for k := range av {
			if !sameInstants(av[k], bv[k]) {
				return false
			}
		}
		return true
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !sameInstants(av[i], bv[i]) {
				return false
			}
		}
		return true
	case string:
		bs, ok := b.(string)
		if !ok {
			return false
		}
		ta, e1 := time.Parse(time.RFC3339Nano, av)
		tb, e2 := time.Parse(time.RFC3339Nano, bs)
		if e1 == nil && e2 == nil {
			return ta.Equal(tb)
		}
		return av == bs
	}
	return reflect.DeepEqual(a, b)
}

// TestAuditRecordForms: a binary record decodes to the entry it encodes, its
// hash is the hash of its canonical form, and a JSON record of the first
// releases still decodes and verifies.
func TestAuditRecordForms(t *testing.T) {
	h := chainOf(t, "acme", 3)
	es := allAudit(t, h.f, "acme")
	for _, e := range es {
		rec := appendAuditRecord(nil, e)
		if rec[0] != auditRecordV2 {
			t.Fatalf("record starts with %d", rec[0])
		}
		back, err := DecodeAuditRecord(rec)
		if err != nil || !reflect.DeepEqual(back, e) {
			t.Fatalf("record round trip: %v\n%+v\n%+v", err, back, e)
		}
		if e.Hash != e.computeHash() {
			t.Fatalf("entry %d: stored hash is not its canonical hash", e.Seq)
		}
		// Every truncation fails to decode, and never panics.
		for n := 0; n < len(rec); n++ {
			if _, err := DecodeAuditRecord(rec[:n]); err == nil && n > 0 {
				// A shorter record can only decode if the cut falls inside
				// the hash, which then is 32 bytes of the body: not possible
				// for a record that decoded whole.
				t.Fatalf("record cut at %d of %d decodes", n, len(rec))
			}
		}
	}
	// Rewrite the chain as JSON records with v1 hashes (a state restored
	// from an older snapshot): it still verifies, and new entries link to it.
	err := h.f.rawUpdate(func(tx *bolt.Tx) error {
		prev := ""
		for _, e := range es {
			e.PrevHash = prev
			e.Hash = e.computeHashV1()
			putJSON(tx.Bucket(bAudit), auditKey("acme", e.Seq), e)
			prev = e.Hash
		}
		var hd AuditHead
		getHead(tx.Bucket(bAuditHeads), "acme", &hd)
		hd.Hash = prev
		putJSON(tx.Bucket(bAuditHeads), tprefix("acme"), &hd) // the head as earlier states stored it
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep := verify(t, h.f, "acme"); !rep.OK || rep.Entries != uint64(len(es)) {
		t.Fatalf("chain of JSON records: %+v", rep)
	}
	h.ok(CmdAppendAudit, sysP, &AppendAuditCmd{Entries: []AuditInput{{Tenant: "acme", Action: ActionLogout, Time: baseTime}}})
	mixed := allAudit(t, h.f, "acme")
	if len(mixed) != len(es)+1 || mixed[len(es)].PrevHash != es[len(es)-1].Hash {
		t.Fatalf("the binary entry after the JSON ones does not link to them")
	}
	if rep := verify(t, h.f, "acme"); !rep.OK || rep.Entries != uint64(len(es)+1) {
		t.Fatalf("mixed chain: %+v", rep)
	}
	// Tampering with a JSON record is still found.
	err = h.f.rawUpdate(func(tx *bolt.Tx) error {
		e := es[1]
		e.Resource = "/elsewhere"
		putJSON(tx.Bucket(bAudit), auditKey("acme", e.Seq), e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep := verify(t, h.f, "acme"); rep.OK || rep.BrokenAt != es[1].Seq || !strings.Contains(rep.Problem, "modified") {
		t.Fatalf("tampered JSON record: %+v", rep)
	}
}

// TestStrDecoding: a string decodes the same through the shared decoder's
// short-ASCII path and through the general one, and the same inputs fail.
func TestStrDecoding(t *testing.T) {
	long := strings.Repeat("x", 200)
	for _, tc := range []struct {
		name string
		in   []byte
		want string
		ok   bool
	}{
		{"empty", []byte{0}, "", true},
		{"ascii", append([]byte{3}, "abc"...), "abc", true},
		{"longest one-byte length", append([]byte{127}, strings.Repeat("y", 127)...), strings.Repeat("y", 127), true},
		{"two-byte length", appendStr(nil, long), long, true},
		{"non-ASCII", appendStr(nil, "héllo"), "héllo", true},
		{"invalid UTF-8", []byte{2, 0xff, 'a'}, "", false},
		{"length beyond the input", []byte{4, 'a', 'b'}, "", false},
		{"length equal to what is left plus one", []byte{2, 'a'}, "", false},
		{"non-minimal length", []byte{0x82, 0x00, 'a', 'b'}, "ab", true},
		{"truncated length", []byte{0x80}, "", false},
	} {
		for _, shared := range []bool{false, true} {
			d := newBdec(tc.in)
			if shared {
				d = newSharedBdec(tc.in)
			}
			got := d.str()
			err := d.done()
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("%s (shared %v): str() = %q, %v; want %q, ok %v", tc.name, shared, got, err, tc.want, tc.ok)
			}
		}
	}
}

// TestTextArena: strings keep their bytes as the arena fills chunks and
// starts new ones.
func TestTextArena(t *testing.T) {
	var ta textArena
	ta.want = 64
	var got, want []string
	for i := range 200 {
		s := strings.Repeat(string(rune('a'+i%26)), i%40)
		b := []byte(s)
		got = append(got, ta.copy(b))
		for j := range b {
			b[j] = '!' // the arena holds a copy
		}
		want = append(want, s)
		if i%50 == 0 {
			ta.reserve(100)
		}
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("string %d = %q, want %q", i, got[i], want[i])
		}
	}
}
