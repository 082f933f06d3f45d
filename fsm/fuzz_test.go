package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecodeCommand: DecodeCommand never panics on arbitrary bytes (either
// envelope version), and what it accepts survives Encode → Decode unchanged.
// A binary payload is decoded into every payload type with a binary form:
// that never panics either, and what decodes re-encodes to the same value.
func FuzzDecodeCommand(f *testing.F) {
	h := Header{Principal: adminOf("acme"), Time: baseTime.UnixNano(), RequestID: "r1", IP: "192.0.2.1", UserAgent: "ua <&>"}
	for typ, payload := range map[CommandType]any{
		CmdNoop:              nil,
		CmdBootstrapOperator: &BootstrapOperatorCmd{Token: OperatorToken{ID: "root", Hash: strings.Repeat("a", 64)}},
		CmdCreateTenant:      &CreateTenantCmd{ID: "acme", Name: "Acme <Inc>", Tier: "free"},
		CmdSetRateLimit:      &SetRateLimitCmd{Tenant: "acme", RequestsPerMinute: 10, RouteCosts: map[string]int{"a": 1}},
		CmdAppendAudit:       &AppendAuditCmd{Entries: []AuditInput{{Tenant: "acme", Action: ActionLogout, Time: baseTime}}},
		CmdAuditRetention:    &AuditRetentionCmd{Before: baseTime},
		CmdSetSecret:         &SetSecretCmd{Secret: Secret{Name: "pepper", Wrapped: []byte{0, 1}}},
		CmdLoginFailures: &LoginFailuresCmd{Policy: DefaultLockout, Failures: []LoginFailure{{Tenant: "acme", Username: "ann",
			Reason: "wrong password", Time: baseTime, IP: "192.0.2.1"}}},
		CmdTouchAPIKeys: &TouchAPIKeysCmd{Uses: []KeyUse{{ID: "k1", LastUsed: baseTime, Count: 3}}},
	} {
		f.Add(mustEncode(f, typ, h, payload))
		if typ != CmdNoop {
			f.Add(mustEncodeV1(f, typ, h, payload))
		}
	}
	f.Add(mustEncode(f, CmdAppendAudit, h, &AppendAuditCmd{Entries: []AuditInput{{Tenant: "acme", Action: ActionLogout,
		Time: baseTime, Metadata: map[string]string{"a": "1", "b": "2"}}, {Action: "x"}}}))
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte("\x01{}"))
	f.Add([]byte("\x01{\"t\":0}"))
	f.Add([]byte("\x01{\"t\":65535,\"f\":1,\"p\":null}"))
	f.Add([]byte("\x01{\"t\":1,\"p\":{ \"a\" : [1, 2.50, \"\\u00e9\"] }, \"h\":{\"pr\":{\"kind\":\"x\"}}}"))
	f.Add([]byte("\x02{\"t\":1}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCommand(data)
		if err != nil {
			return
		}
		if c.Type == CmdInvalid {
			t.Fatal("DecodeCommand accepted type 0")
		}
		b, err := c.Encode()
		if err != nil {
			t.Fatalf("Encode of a decoded command: %v", err)
		}
		c2, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("re-decode of %q: %v", b, err)
		}
		if c2.Type != c.Type || c2.Flags != c.Flags || c2.Header != c.Header {
			t.Fatalf("round trip changed the envelope:\n%+v\n%+v", c, c2)
		}
		if !sameJSON(t, c.Payload, c2.Payload) || !bytes.Equal(c.BinPayload, c2.BinPayload) {
			t.Fatalf("round trip changed the payload: %s → %s", c.Payload, c2.Payload)
		}
		if c.BinPayload != nil {
			fuzzBinaryPayloads(t, &c)
		}
		b2, err := c2.Encode()
		if err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not stable: %q then %q (%v)", b, b2, err)
		}
	})
}

// fuzzBinaryPayloads decodes c's binary payload as each payload type that has
// a binary form; what decodes must re-encode and decode to the same value.
func fuzzBinaryPayloads(t *testing.T, c *Command) {
	for _, mk := range []func() binaryPayload{
		func() binaryPayload { return &AppendAuditCmd{} },
		func() binaryPayload { return &LoginFailuresCmd{} },
		func() binaryPayload { return &TouchAPIKeysCmd{} },
	} {
		p := mk()
		if err := decodePayload(c, p); err != nil {
			continue
		}
		c2 := Command{Type: c.Type, BinPayload: p.appendBinary(nil)}
		p2 := mk()
		if err := decodePayload(&c2, p2); err != nil {
			t.Fatalf("%T: re-encoded payload does not decode: %v", p, err)
		}
		if !reflect.DeepEqual(p, p2) {
			t.Fatalf("%T: payload round trip changed it:\n%+v\n%+v", p, p, p2)
		}
	}
}

// FuzzDecodeAuditRecord: a stored audit record never makes the decoder
// panic; a binary record that decodes re-encodes to an equal entry.
func FuzzDecodeAuditRecord(f *testing.F) {
	h := chainOf(f, "acme", 2)
	var recs [][]byte
	view(f, h.f, func(r *Reader) { recs = r.AuditRaw("acme", 0, 10) })
	for _, r := range recs {
		f.Add(r)
		f.Add(r[:len(r)/2])
	}
	f.Add([]byte{})
	f.Add([]byte{auditRecordV2})
	f.Add([]byte(`{"id":"x","seq":1,"hash":"ab"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := DecodeAuditRecord(data)
		if err != nil || data[0] != auditRecordV2 {
			return
		}
		_ = e.computeHash()
		e2, err := DecodeAuditRecord(appendAuditRecord(nil, e))
		if err != nil || !reflect.DeepEqual(e, e2) {
			t.Fatalf("record round trip: %v\n%+v\n%+v", err, e, e2)
		}
	})
}

// sameJSON compares two JSON texts by value (numbers exactly, as written).
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	dec := func(x []byte) any {
		d := json.NewDecoder(bytes.NewReader(x))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("payload %q does not decode: %v", x, err)
		}
		return v
	}
	return reflect.DeepEqual(dec(a), dec(b))
}

// validTenantIDRef is an independent statement of the rule: 1 to 64 bytes, each
// one of a-z, 0-9, '_' and '-'.
func validTenantIDRef(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

var tenantIDCases = map[string]bool{
	"":                      false,
	"a":                     true,
	"acme":                  true,
	"acme-corp_2":           true,
	"-":                     true,
	"_":                     true,
	"0":                     true,
	strings.Repeat("a", 64): true,
	strings.Repeat("a", 65): false,
	strings.Repeat("é", 32): false, // 64 bytes, not ASCII
	"../x":                  false,
	"..":                    false,
	".":                     false,
	"a/b":                   false,
	"a\\b":                  false,
	"ténant":                false,
	"tenant\u0131":          false, // dotless i
	"ACME":                  false,
	"Acme":                  false,
	"a\x00b":                false,
	"a\x00":                 false,
	"a b":                   false,
	" a":                    false,
	"a\n":                   false,
	"a\r\n":                 false,
	"\na":                   false,
	"a\t":                   false,
	"a.b":                   false,
	"a%2e":                  false,
	"a:b":                   false,
	"\u212a":                false, // Kelvin sign, folds to k
	"ａ":                     false, // fullwidth a
	"a\u200b":               false, // zero-width space
	"\xff":                  false,
	strings.Repeat("-", 64): true,
}

func TestValidTenantID(t *testing.T) {
	for id, want := range tenantIDCases {
		if got := ValidTenantID(id) == nil; got != want {
			t.Errorf("ValidTenantID(%q) accepts = %v, want %v", id, got, want)
		}
		if ref := validTenantIDRef(id); ref != want {
			t.Errorf("reference checker on %q = %v, want %v (the test's table is wrong)", id, ref, want)
		}
	}
}

// FuzzValidTenantID: ValidTenantID accepts exactly ^[a-z0-9_-]{1,64}$.
func FuzzValidTenantID(f *testing.F) {
	for id := range tenantIDCases {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		got, want := ValidTenantID(id) == nil, validTenantIDRef(id)
		if got != want {
			t.Fatalf("ValidTenantID(%q) accepts = %v, the rule says %v", id, got, want)
		}
	})
}

// FuzzReadSnapshot: ValidateSnapshot never panics and fails only with
// ErrBadSnapshot. With seal set, the input gets a correct checksum, so the
// structure is what is fuzzed: whatever validates must also restore (raft
// panics when a validated user restore then fails).
func FuzzReadSnapshot(f *testing.F) {
	h := populated(f)
	good := snapshotBytes(f, h.f)
	body := good[:len(good)-1-32]
	f.Add(good, false)
	f.Add(body, true)
	f.Add(good[:len(good)/2], false)
	f.Add(body[:len(body)/3], true)
	f.Add([]byte{}, false)
	f.Add(bytes.Clone(snapMagic), true)
	f.Add(craftSnapshot(func(w *snapWriter) { w.bucket("a"); w.kv("k", "v"); w.bucket("b") }), false)
	f.Add(append(bytes.Clone(snapMagic), 'B', 1, 'x', 'K', 1, 'k', 0), true)
	f.Add(append(bytes.Clone(snapMagic), 'B', 0xff, 0xff, 0xff, 0xff, 0x0f), true)

	target := newFSM(f)
	f.Fuzz(func(t *testing.T, data []byte, seal bool) {
		if seal {
			data = sealSnapshot(data)
		}
		err := ValidateSnapshot(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("ValidateSnapshot: %v, want ErrBadSnapshot", err)
			}
			return
		}
		if err := target.Restore(readCloser(data)); err != nil {
			t.Fatalf("a stream that validates does not restore: %v", err)
		}
		var out bytes.Buffer
		if err := target.WriteSnapshotTo(&out); err != nil {
			t.Fatalf("WriteSnapshotTo after restore: %v", err)
		}
		if err := ValidateSnapshot(&out); err != nil {
			t.Fatalf("snapshot of restored state does not validate: %v", err)
		}
	})
}

// TestFuzzSeedsAreMeaningful: the snapshot seeds include a stream that
// validates, so the restore branch of FuzzReadSnapshot runs.
func TestFuzzSeedsAreMeaningful(t *testing.T) {
	good := snapshotBytes(t, populated(t).f)
	if err := ValidateSnapshot(bytes.NewReader(sealSnapshot(good[:len(good)-33]))); err != nil {
		t.Fatalf("resealed body of a good snapshot does not validate: %v", err)
	}
}
