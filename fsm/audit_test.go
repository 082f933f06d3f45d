package fsm

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// chainOf appends n entries to tenant's chain (plus its creation entry) and
// returns the harness.
func chainOf(t testing.TB, tenant string, n int) *harness {
	t.Helper()
	h := seeded(t)
	es := make([]AuditInput, n)
	for i := range es {
		es[i] = AuditInput{Tenant: tenant, Time: baseTime.Add(time.Duration(i) * time.Minute), Action: ActionAPIKeyUsed,
			Actor: Actor{Kind: PrincipalAPIKey, ID: fmt.Sprintf("k%d", i%3)}, Resource: fmt.Sprintf("/r/%d", i)}
	}
	h.ok(CmdAppendAudit, sysP, &AppendAuditCmd{Entries: es})
	return h
}

func rawEntry(t *testing.T, tx *bolt.Tx, tenant string, seq uint64) *AuditEntry {
	t.Helper()
	k := auditKey(tenant, seq)
	v := tx.Bucket(bAudit).Get(k)
	if v == nil {
		t.Fatalf("no audit entry %s/%d", tenant, seq)
	}
	return mustDecodeAudit(k, v)
}

func rawPut(tx *bolt.Tx, tenant string, e *AuditEntry) {
	rawPutAt(tx, tenant, e.Seq, e)
}

func rawPutAt(tx *bolt.Tx, tenant string, seq uint64, e *AuditEntry) {
	if err := tx.Bucket(bAudit).Put(auditKey(tenant, seq), appendAuditRecord(nil, e)); err != nil {
		panic(err)
	}
}

func TestVerifyAuditDetectsTampering(t *testing.T) {
	const n = 8 // acme: seq 1 is tenant_created, 2..9 appended
	const last = n + 1
	cases := []struct {
		name   string
		tamper func(t *testing.T, tx *bolt.Tx)
		broken uint64
		says   string
	}{
		{"edited entry", func(t *testing.T, tx *bolt.Tx) {
			e := rawEntry(t, tx, "acme", 4)
			e.Outcome = OutcomeFailure
			rawPut(tx, "acme", e)
		}, 4, "modified"},
		{"edited entry with its hash recomputed", func(t *testing.T, tx *bolt.Tx) {
			e := rawEntry(t, tx, "acme", 4)
			e.Actor.ID = "someone-else"
			e.Hash = e.computeHash()
			rawPut(tx, "acme", e)
		}, 5, "link"},
		{"edited last entry with its hash recomputed", func(t *testing.T, tx *bolt.Tx) {
			e := rawEntry(t, tx, "acme", last)
			e.Resource = "/elsewhere"
			e.Hash = e.computeHash()
			rawPut(tx, "acme", e)
		}, last, "head"},
		{"deleted middle entry", func(t *testing.T, tx *bolt.Tx) {
			del(tx.Bucket(bAudit), auditKey("acme", 5))
		}, 5, "missing"},
		{"deleted first entry", func(t *testing.T, tx *bolt.Tx) {
			del(tx.Bucket(bAudit), auditKey("acme", 1))
		}, 1, "missing"},
		{"deleted last entry", func(t *testing.T, tx *bolt.Tx) {
			del(tx.Bucket(bAudit), auditKey("acme", last))
		}, last, "deleted"},
		{"deleted every entry", func(t *testing.T, tx *bolt.Tx) {
			for s := uint64(1); s <= last; s++ {
				del(tx.Bucket(bAudit), auditKey("acme", s))
			}
		}, 1, "deleted"},
		{"entry appended past the head", func(t *testing.T, tx *bolt.Tx) {
			e := rawEntry(t, tx, "acme", last)
			e.PrevHash, e.Seq = e.Hash, last+1
			e.Hash = e.computeHash()
			rawPut(tx, "acme", e)
		}, last + 1, "inserted"},
		{"entries swapped", func(t *testing.T, tx *bolt.Tx) {
			a, b := rawEntry(t, tx, "acme", 3), rawEntry(t, tx, "acme", 6)
			rawPutAt(tx, "acme", 3, b)
			rawPutAt(tx, "acme", 6, a)
		}, 3, "expected entry 3"},
		{"entry does not decode", func(t *testing.T, tx *bolt.Tx) {
			if err := tx.Bucket(bAudit).Put(auditKey("acme", 7), []byte("{not json")); err != nil {
				t.Fatal(err)
			}
		}, 7, "decode"},
		{"head hash replaced", func(t *testing.T, tx *bolt.Tx) {
			var hd AuditHead
			getHead(tx.Bucket(bAuditHeads), "acme", &hd)
			hd.Hash = strings.Repeat("0", 64)
			putHead(tx.Bucket(bAuditHeads), &hd)
		}, last, "head"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := chainOf(t, "acme", n)
			if rep := verify(t, h.f, "acme"); !rep.OK || rep.Entries != last || rep.FirstSeq != 1 || rep.LastSeq != last {
				t.Fatalf("before tampering: %+v, want OK with %d entries", rep, last)
			}
			if err := h.f.rawUpdate(func(tx *bolt.Tx) error { c.tamper(t, tx); return nil }); err != nil {
				t.Fatal(err)
			}
			rep := verify(t, h.f, "acme")
			if rep.OK || rep.BrokenAt != c.broken || !strings.Contains(rep.Problem, c.says) {
				t.Fatalf("after tampering: %+v; want broken at %d with a problem mentioning %q", rep, c.broken, c.says)
			}
			// Other chains are unaffected.
			for _, other := range []string{"globex", ""} {
				if rep := verify(t, h.f, other); !rep.OK {
					t.Errorf("chain %q reported broken after tampering with acme: %+v", other, rep)
				}
			}
		})
	}
	if rep := verify(t, newFSM(t), "nobody"); !rep.OK || rep.Entries != 0 {
		t.Errorf("chain that never existed: %+v, want OK and empty", rep)
	}
}

func TestAuditChainLinks(t *testing.T) {
	h := chainOf(t, "acme", 5)
	es := allAudit(t, h.f, "acme")
	for i, e := range es {
		if e.Seq != uint64(i+1) || e.Tenant != "acme" || e.Hash != e.computeHash() {
			t.Fatalf("entry %d = %+v: wrong seq, tenant or hash", i, e)
		}
		if i > 0 && e.PrevHash != es[i-1].Hash {
			t.Fatalf("entry %d does not link to entry %d", e.Seq, es[i-1].Seq)
		}
	}
	if es[0].PrevHash != "" {
		t.Fatalf("first entry's prev_hash = %q, want empty", es[0].PrevHash)
	}
	// Entry ids are unique, derived from the raft index.
	ids := map[string]bool{}
	for _, e := range es {
		if ids[e.ID] {
			t.Fatalf("duplicate audit id %s", e.ID)
		}
		ids[e.ID] = true
	}
}

func TestAuditRetention(t *testing.T) {
	h := seeded(t)
	at := func(m int) time.Time { return baseTime.Add(time.Duration(m) * time.Hour) }
	appendAt := func(tenant string, hours ...int) {
		es := make([]AuditInput, len(hours))
		for i, m := range hours {
			es[i] = AuditInput{Tenant: tenant, Time: at(m), Action: ActionLoginFailed, Metadata: map[string]string{"h": itoa(m)}}
		}
		h.ok(CmdAppendAudit, sysP, &AppendAuditCmd{Entries: es})
	}
	// acme: creation (baseTime+2s) then 1h..6h. globex: creation, then times out
	// of order (an edge's clock): 1h, 2h, 9h, 3h.
	appendAt("acme", 1, 2, 3, 4, 5, 6)
	appendAt("globex", 1, 2, 9, 3)

	dropped := h.ok(CmdAuditRetention, opP, &AuditRetentionCmd{Before: at(4)})
	// acme: creation + 1h..3h = 4; globex: creation + 1h, 2h = 3 (stops at 9h:
	// retention drops the oldest entries only, never from the middle);
	// cluster chain: bootstrap = 1.
	if dropped != 8 {
		t.Fatalf("dropped %v entries, want 8", dropped)
	}
	hours := func(tenant string) []string {
		var out []string
		for _, e := range allAudit(t, h.f, tenant) {
			out = append(out, e.Metadata["h"])
		}
		return out
	}
	if got, want := hours("acme"), []string{"4", "5", "6"}; !reflect.DeepEqual(got, want) {
		t.Errorf("acme keeps entries of hours %v, want %v", got, want)
	}
	if got, want := hours("globex"), []string{"9", "3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("globex keeps entries of hours %v, want %v", got, want)
	}
	if rep := verify(t, h.f, "acme"); !rep.OK || rep.FirstSeq != 5 || rep.Entries != 3 {
		t.Errorf("acme after retention: %+v, want OK from seq 5 with 3 entries", rep)
	}
	verifyAll(t, h.f)
	es := allAudit(t, h.f, "")
	if last := es[len(es)-1]; last.Action != ActionAuditRetention || last.Metadata["dropped"] != "8" {
		t.Errorf("retention audit entry = %+v, want audit_retention with dropped 8", last)
	}

	// Same cut-off again: only the first retention's own entry (proposed at
	// baseTime plus seconds) is older.
	if got := h.ok(CmdAuditRetention, opP, &AuditRetentionCmd{Before: at(4)}); got != 1 {
		t.Errorf("second retention dropped %v, want 1", got)
	}
	// Dropping everything leaves empty chains that still verify, and new
	// entries continue the sequence.
	h.ok(CmdAuditRetention, opP, &AuditRetentionCmd{Before: at(100)})
	if got := allAudit(t, h.f, "acme"); len(got) != 0 {
		t.Fatalf("acme keeps %d entries after dropping everything", len(got))
	}
	verifyAll(t, h.f)
	appendAt("acme", 200)
	es = allAudit(t, h.f, "acme")
	if len(es) != 1 || es[0].Seq != 8 {
		t.Fatalf("after refilling: %+v, want one entry with seq 8", es)
	}
	verifyAll(t, h.f)
}

// TestAuditQuery checks filters and cursor pagination against an independent
// filter over all entries.
func TestAuditQuery(t *testing.T) {
	h := seeded(t)
	h.createTenant("acme-2", "free") // shares a prefix with acme
	actions := []Action{ActionLoginFailed, ActionLoginSucceeded, ActionAPIKeyUsed}
	var es []AuditInput
	for i := range 60 {
		es = append(es, AuditInput{Tenant: "acme", Time: baseTime.Add(time.Duration(i*7%60) * time.Minute),
			Action: actions[i%3], Actor: Actor{Kind: PrincipalUser, ID: fmt.Sprintf("u%d", i%4), Name: fmt.Sprintf("name%d", i%5)}})
	}
	es = append(es, AuditInput{Tenant: "acme-2", Time: baseTime, Action: ActionLoginFailed, Actor: Actor{ID: "u1"}})
	h.ok(CmdAppendAudit, sysP, &AppendAuditCmd{Entries: es})
	all := allAudit(t, h.f, "acme")
	if len(all) != 61 {
		t.Fatalf("acme has %d entries, want 61", len(all))
	}

	since, until := baseTime.Add(10*time.Minute), baseTime.Add(40*time.Minute)
	queries := []AuditQuery{
		{},
		{Action: ActionLoginFailed},
		{Actor: "u1"},
		{Actor: "name3"},
		{Since: since},
		{Until: until},
		{Since: since, Until: until, Action: ActionAPIKeyUsed},
		{Action: "no_such_action"},
		{Since: until, Until: since},
	}
	for _, q := range queries {
		q.Tenant = "acme"
		var want []*AuditEntry
		for _, e := range all {
			if (q.Action == "" || e.Action == q.Action) && (q.Actor == "" || e.Actor.ID == q.Actor || e.Actor.Name == q.Actor) &&
				(q.Since.IsZero() || !e.Time.Before(q.Since)) && (q.Until.IsZero() || e.Time.Before(q.Until)) {
				want = append(want, e)
			}
		}
		for _, limit := range []int{1, 4, 7, 1000} {
			q.Limit, q.After = limit, 0
			var got []*AuditEntry
			for pages := 0; ; pages++ {
				if pages > 100 {
					t.Fatalf("%+v: pagination does not end", q)
				}
				var page []*AuditEntry
				var next uint64
				view(t, h.f, func(r *Reader) { page, next = r.Audit(q) })
				if len(page) > limit {
					t.Fatalf("%+v: page of %d entries, limit %d", q, len(page), limit)
				}
				if next != 0 && (len(page) == 0 || next != page[len(page)-1].Seq) {
					t.Fatalf("%+v: cursor %d does not point at the last entry of the page", q, next)
				}
				got = append(got, page...)
				if next == 0 {
					break
				}
				q.After = next
			}
			if !sameSeqs(got, want) {
				t.Errorf("query %+v (limit %d): got seqs %v, want %v", q, limit, seqs(got), seqs(want))
			}
		}
	}

	// A full last page ends the log with cursor 0, not a cursor to an empty page.
	var page []*AuditEntry
	var next uint64
	view(t, h.f, func(r *Reader) { page, next = r.Audit(AuditQuery{Tenant: "acme", After: 41, Limit: 20}) })
	if len(page) != 20 || next != 0 {
		t.Errorf("last full page: %d entries, cursor %d; want 20 and 0", len(page), next)
	}
	// Limits out of range fall back to 100; a cursor past the end is empty,
	// including the largest one.
	for _, q := range []AuditQuery{{Limit: 0}, {Limit: -5}, {Limit: 1001}} {
		q.Tenant = "acme"
		view(t, h.f, func(r *Reader) { page, _ = r.Audit(q) })
		if len(page) != 61 {
			t.Errorf("limit %d: %d entries, want all 61 (default limit 100)", q.Limit, len(page))
		}
	}
	for _, after := range []uint64{61, 1000, math.MaxUint64} {
		view(t, h.f, func(r *Reader) { page, next = r.Audit(AuditQuery{Tenant: "acme", After: after}) })
		if len(page) != 0 || next != 0 {
			t.Errorf("cursor %d: %d entries, next %d; want none", after, len(page), next)
		}
	}
	// Tenants never see each other's entries, whatever their ids share.
	for tenant, want := range map[string]int{"acme-2": 2, "acm": 0, "cme": 0} {
		view(t, h.f, func(r *Reader) { page, _ = r.Audit(AuditQuery{Tenant: tenant}) })
		if len(page) != want {
			t.Errorf("tenant %q: %d entries, want %d", tenant, len(page), want)
		}
		for _, e := range page {
			if e.Tenant != tenant {
				t.Errorf("query for %q returned an entry of %q", tenant, e.Tenant)
			}
		}
	}
}

func seqs(es []*AuditEntry) []uint64 {
	out := []uint64{}
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}

func sameSeqs(a, b []*AuditEntry) bool { return reflect.DeepEqual(seqs(a), seqs(b)) }

func TestTenantsPagination(t *testing.T) {
	h := seeded(t)
	for i := range 12 {
		h.createTenant(fmt.Sprintf("t%02d", i), "free")
	}
	var ids []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 20 {
			t.Fatal("tenant pagination does not end")
		}
		var page []*Tenant
		var next string
		view(t, h.f, func(r *Reader) { page, next = r.Tenants(after, 5) })
		for _, ten := range page {
			ids = append(ids, ten.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	want := []string{"acme", "globex"}
	for i := range 12 {
		want = append(want, fmt.Sprintf("t%02d", i))
	}
	if !reflect.DeepEqual(ids, want) {
		t.Fatalf("paged tenants %v, want %v", ids, want)
	}
	// A cursor that is not a tenant id starts after where it would sort.
	var page []*Tenant
	view(t, h.f, func(r *Reader) { page, _ = r.Tenants("h", 100) })
	if len(page) != 12 || page[0].ID != "t00" {
		t.Fatalf("after cursor h: %d tenants starting %v, want the 12 t-tenants", len(page), page)
	}
	// A limit of zero or less does not panic.
	for _, limit := range []int{0, -1} {
		view(t, h.f, func(r *Reader) { page, _ = r.Tenants("", limit) })
		if len(page) == 0 {
			t.Errorf("limit %d: no tenants", limit)
		}
	}
}

// TestAuditEntryJSON: the stored form is what the API returns; field names stay.
func TestAuditEntryJSON(t *testing.T) {
	h := chainOf(t, "acme", 1)
	b, err := json.Marshal(allAudit(t, h.f, "acme")[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{`"id"`, `"tenant"`, `"seq"`, `"time"`, `"action"`, `"actor"`, `"outcome"`, `"prev_hash"`, `"hash"`} {
		if !strings.Contains(string(b), f) {
			t.Errorf("audit entry JSON %s lacks %s", b, f)
		}
	}
}
