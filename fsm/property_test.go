package fsm

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"pgregory.net/rapid"
)

type rapidChooser struct{ t *rapid.T }

func (c rapidChooser) intn(what string, n int) int { return rapid.IntRange(0, n-1).Draw(c.t, what) }

// model is what the test expects of the tenant and operator state.
type model struct {
	tenants  map[string]TenantStatus
	operator bool
}

// expect predicts the result code of the commands whose outcome the model
// knows ("?" when it does not), and updates the model on success.
func (m *model) expect(c Command) Code {
	p := c.Header.Principal
	switch c.Type {
	case CmdCreateTenant:
		var x CreateTenantCmd
		mustDecodePayload(&c, &x)
		_, tierOK := Tiers[x.Tier]
		switch {
		case !p.IsOperator():
			return CodeForbidden
		case ValidTenantID(x.ID) != nil || !(x.Tier == "" || tierOK) || strings.ContainsAny(x.Name, "\n") || x.Quotas.MaxUsers < 0:
			return CodeInvalidArgument
		case m.tenants[x.ID] != "":
			return CodeConflict
		}
		m.tenants[x.ID] = TenantActive
	case CmdDeleteTenant:
		var x DeleteTenantCmd
		mustDecodePayload(&c, &x)
		switch {
		case !p.IsOperator():
			return CodeForbidden
		case m.tenants[x.ID] == "":
			return CodeNotFound
		}
		delete(m.tenants, x.ID)
	case CmdSetTenantStatus:
		var x SetTenantStatusCmd
		mustDecodePayload(&c, &x)
		switch {
		case !p.IsOperator():
			return CodeForbidden
		case x.Status != TenantActive && x.Status != TenantSuspended:
			return CodeInvalidArgument
		case m.tenants[x.ID] == "":
			return CodeNotFound
		}
		m.tenants[x.ID] = x.Status
	case CmdBootstrapOperator:
		var x BootstrapOperatorCmd
		mustDecodePayload(&c, &x)
		switch {
		case p.Kind != PrincipalSystem:
			return CodeForbidden
		case len(x.Token.Hash) < 32:
			return CodeInvalidArgument
		case m.operator:
			return CodeConflict
		}
		m.operator = true
	default:
		return "?"
	}
	return ""
}

var knownCodes = map[Code]bool{CodeInvalidArgument: true, CodeNotFound: true, CodeConflict: true, CodeForbidden: true,
	CodeFailedPrecondition: true, CodeUnauthenticated: true}

// checkInvariants checks what must hold after every entry.
func checkInvariants(t *rapid.T, f *FSM, m *model, index uint64) {
	err := f.View(func(r *Reader) error {
		if got := r.AppliedIndex(); got != index {
			t.Fatalf("applied index %d, want %d", got, index)
		}
		tenants, _ := r.Tenants("", 1000)
		if len(tenants) != len(m.tenants) {
			t.Fatalf("%d tenants stored, model has %d (%v)", len(tenants), len(m.tenants), m.tenants)
		}
		for _, ten := range tenants {
			if m.tenants[ten.ID] != ten.Status {
				t.Fatalf("tenant %s has status %q, model %q", ten.ID, ten.Status, m.tenants[ten.ID])
			}
			if lim, ok := r.RateLimit(ten.ID); !ok || lim.Tenant != ten.ID {
				t.Fatalf("tenant %s has no rate-limit record (%+v)", ten.ID, lim)
			}
			// Quota counters match the records they count.
			users := 0
			c := r.tx.Bucket(bUsers).Cursor()
			for k, _ := c.Seek(tprefix(ten.ID)); k != nil && bytes.HasPrefix(k, tprefix(ten.ID)); k, _ = c.Next() {
				users++
			}
			keys, rules := 0, 0
			_ = r.tx.Bucket(bAPIKeys).ForEach(func(_, v []byte) error {
				if recordTenant(v) == ten.ID {
					keys++
				}
				return nil
			})
			_ = r.tx.Bucket(bIPRules).ForEach(func(_, v []byte) error {
				if recordTenant(v) == ten.ID {
					rules++
				}
				return nil
			})
			if ten.Users != users || ten.APIKeys != keys || ten.IPRules != rules {
				t.Fatalf("tenant %s counters users=%d api_keys=%d ip_rules=%d, records %d/%d/%d",
					ten.ID, ten.Users, ten.APIKeys, ten.IPRules, users, keys, rules)
			}
		}
		// Every limit record belongs to a tenant.
		_ = r.tx.Bucket(bLimits).ForEach(func(k, _ []byte) error {
			if m.tenants[string(k)] == "" {
				t.Fatalf("rate-limit record for missing tenant %q", k)
			}
			return nil
		})
		if _, ok := r.Operator(); ok != m.operator {
			t.Fatalf("operator present = %v, model %v", ok, m.operator)
		}
		for _, h := range r.AuditHeads() {
			if h.FirstSeq < 1 || h.FirstSeq > h.Seq+1 {
				t.Fatalf("audit head %+v out of range", h)
			}
			if rep := r.VerifyAudit(h.Tenant); !rep.OK {
				t.Fatalf("audit chain %q: %+v", h.Tenant, rep)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("View: %v", err)
	}
}

func openIn(t *rapid.T, dir string) *FSM {
	f, err := Open(dir, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return f
}

func snapOf(t *rapid.T, f *FSM) []byte {
	var b bytes.Buffer
	if err := f.WriteSnapshotTo(&b); err != nil {
		t.Fatalf("WriteSnapshotTo: %v", err)
	}
	return b.Bytes()
}

// TestPropertyRandomCommands applies random command sequences and checks the
// model and the invariants after every entry; at the end, a replica fed the
// same log in one batch, and one restored from a snapshot, are identical.
func TestPropertyRandomCommands(t *testing.T) {
	root := t.TempDir()
	runs := 0
	rapid.Check(t, func(rt *rapid.T) {
		runs++
		dir := filepath.Join(root, itoa(runs))
		defer os.RemoveAll(dir)
		f := openIn(rt, filepath.Join(dir, "a"))
		defer f.Close()
		m := &model{tenants: map[string]TenantStatus{}}

		logs := genLogs(rt, rapidChooser{rt}, rapid.IntRange(1, 60).Draw(rt, "entries"))
		for _, l := range logs {
			out := f.Apply(l)
			if l.Type != raft.LogCommand {
				checkInvariants(rt, f, m, l.Index)
				continue
			}
			c, err := DecodeCommand(l.Data)
			if err != nil {
				rt.Fatalf("generated entry does not decode: %v", err)
			}
			res := out.(*Result)
			if _, known := handlers(c.Type); !known {
				if res.Err != nil || res.Value != nil {
					rt.Fatalf("skipped unknown command returned %+v", res)
				}
			} else if want := m.expect(c); want != "?" {
				if got := resCode(res); got != want {
					rt.Fatalf("entry %d %s by %s/%s: code %q (%v), model expects %q\npayload %s",
						l.Index, c.Type, c.Header.Principal.Kind, c.Header.Principal.Tenant, got, res.Err, want, c.Payload)
				}
			} else if res.Err != nil && !knownCodes[res.Err.Code] {
				rt.Fatalf("entry %d %s: unknown error code %q", l.Index, c.Type, res.Err.Code)
			}
			checkInvariants(rt, f, m, l.Index)
		}
		want := snapOf(rt, f)

		g := openIn(rt, filepath.Join(dir, "b"))
		defer g.Close()
		g.ApplyBatch(logs)
		if !bytes.Equal(snapOf(rt, g), want) {
			rt.Fatalf("replica fed the log in one batch differs")
		}
		if err := g.Restore(readCloser(want)); err != nil {
			rt.Fatalf("Restore: %v", err)
		}
		if !bytes.Equal(snapOf(rt, g), want) {
			rt.Fatalf("restored replica differs")
		}
	})
}

func resCode(r *Result) Code {
	if r.Err == nil {
		return ""
	}
	return r.Err.Code
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func readCloser(b []byte) nopCloser { return nopCloser{bytes.NewReader(b)} }
