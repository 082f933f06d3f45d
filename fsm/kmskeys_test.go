package fsm

import (
	"fmt"
	"strings"
	"testing"

	"github.com/allsource/guard/auth"
)

// kmsRecord builds the stored form of a kms key record (what
// kms.MarshalKeyRecord makes) with the given number of versions.
func kmsRecord(name string, rev uint64, versions, minDec int, backend string) []byte {
	var vs []string
	for i := 1; i <= versions; i++ {
		vs = append(vs, fmt.Sprintf(`{"version":%d,"created_at":"2026-03-01T12:00:00Z","material":"AAAA"}`, i))
	}
	return []byte(fmt.Sprintf(`{"format":1,"name":%q,"backend":%q,"versions":[%s],"min_decryption_version":%d,`+
		`"created_at":"2026-03-01T12:00:00Z","updated_at":"2026-03-01T12:00:00Z","revision":%d}`,
		name, backend, strings.Join(vs, ","), minDec, rev))
}

func putKey(name, tenant string, rev uint64, versions, minDec int) *PutKMSKeyCmd {
	return &PutKMSKeyCmd{Name: name, Tenant: tenant, Revision: rev, Record: kmsRecord(name, rev, versions, minDec, "local")}
}

func kmsKeyOf(t testing.TB, f *FSM, name string) *KMSKey {
	t.Helper()
	var k *KMSKey
	view(t, f, func(r *Reader) { k, _ = r.KMSKey(name) })
	return k
}

func lastAudit(t testing.TB, f *FSM, tenant string) *AuditEntry {
	t.Helper()
	es := allAudit(t, f, tenant)
	if len(es) == 0 {
		t.Fatalf("no audit entries in chain %q", tenant)
	}
	return es[len(es)-1]
}

// kmsHandlerCases are the handler cases of the KMS key commands (merged into
// handlerCases).
func kmsHandlerCases() map[CommandType][]step {
	cases := map[CommandType][]step{}
	acmeAdmin := adminOf("acme") // not a real user: refused at apply time
	wantKey := func(name, tenant string, rev uint64) func(t *testing.T, h *harness, res *Result) {
		return func(t *testing.T, h *harness, res *Result) {
			k := kmsKeyOf(t, h.f, name)
			if k == nil || k.Tenant != tenant || k.Revision != rev {
				t.Fatalf("stored key %s = %+v, want owner %q revision %d", name, k, tenant, rev)
			}
		}
	}
	cases[CmdPutKMSKey] = []step{
		{name: "operator creates global", by: opP, payload: putKey("pii", "", 1, 1, 1), check: func(t *testing.T, h *harness, res *Result) {
			wantKey("pii", "", 1)(t, h, res)
			if e := lastAudit(t, h.f, ""); e.Action != ActionKMSKeyCreated || e.Resource != "kms-key/pii" || e.Metadata["backend"] != "local" {
				t.Errorf("audit = %+v, want kms_key_created for kms-key/pii", e)
			}
		}},
		{name: "operator creates for acme", by: opP, payload: putKey("acme/key", "acme", 1, 1, 1), check: wantKey("acme/key", "acme", 1)},
		{name: "tenant key in another tenant's name space", by: opP, payload: putKey("globex/key", "acme", 1, 1, 1), want: CodeInvalidArgument},
		{name: "tenant key without its tenant prefix", by: opP, payload: putKey("key2", "acme", 1, 1, 1), want: CodeInvalidArgument},
		{name: "global key with a tenant prefix", by: opP, payload: putKey("acme/key2", "", 1, 1, 1), want: CodeInvalidArgument},
		{name: "global key with a slash", by: opP, payload: putKey("a/b/c", "", 1, 1, 1), want: CodeInvalidArgument},
		{name: "tenant key with a bad prefix", by: opP, payload: putKey("Acme/key", "acme", 1, 1, 1), want: CodeInvalidArgument},
		{name: "same short name in another tenant", by: opP, payload: putKey("globex/key", "globex", 1, 1, 1), check: wantKey("globex/key", "globex", 1)},
		{name: "create taken name", by: opP, payload: putKey("pii", "", 1, 1, 1), want: CodeConflict},
		{name: "create taken name for another owner", by: opP, payload: putKey("pii", "globex", 1, 1, 1), want: CodeInvalidArgument},
		{name: "rotate", by: opP, payload: putKey("pii", "", 2, 2, 1), check: func(t *testing.T, h *harness, res *Result) {
			wantKey("pii", "", 2)(t, h, res)
			if e := lastAudit(t, h.f, ""); e.Action != ActionKMSKeyRotated || e.Metadata["version"] != "2" {
				t.Errorf("audit = %+v, want kms_key_rotated to version 2", e)
			}
		}},
		{name: "stale update", by: opP, payload: putKey("pii", "", 2, 2, 2), want: CodeConflict},
		{name: "update skipping a revision", by: opP, payload: putKey("pii", "", 4, 2, 2), want: CodeConflict},
		{name: "config change", by: opP, payload: putKey("pii", "", 3, 2, 2), check: func(t *testing.T, h *harness, res *Result) {
			wantKey("pii", "", 3)(t, h, res)
			if e := lastAudit(t, h.f, ""); e.Action != ActionConfigChanged || e.Metadata["min_decryption_version"] != "2" {
				t.Errorf("audit = %+v, want config_changed with min_decryption_version 2", e)
			}
		}},
		{name: "update of a missing key", by: opP, payload: putKey("nokey", "", 2, 2, 1), want: CodeConflict},
		{name: "drops a version", by: opP, payload: putKey("pii", "", 4, 1, 1), want: CodeInvalidArgument},
		{name: "adds two versions", by: opP, payload: putKey("pii", "", 4, 4, 1), want: CodeInvalidArgument},
		{name: "changes backend", by: opP, payload: &PutKMSKeyCmd{Name: "pii", Revision: 4, Record: kmsRecord("pii", 4, 3, 1, "aws")}, want: CodeInvalidArgument},
		{name: "new key with two versions", by: opP, payload: putKey("two", "", 1, 2, 1), want: CodeInvalidArgument},
		{name: "record of another name", by: opP, payload: &PutKMSKeyCmd{Name: "x", Revision: 1, Record: kmsRecord("y", 1, 1, 1, "local")}, want: CodeInvalidArgument},
		{name: "record of another revision", by: opP, payload: &PutKMSKeyCmd{Name: "x", Revision: 1, Record: kmsRecord("x", 2, 1, 1, "local")}, want: CodeInvalidArgument},
		{name: "record not json", by: opP, payload: &PutKMSKeyCmd{Name: "x", Revision: 1, Record: []byte("nope")}, want: CodeInvalidArgument},
		{name: "no record", by: opP, payload: &PutKMSKeyCmd{Name: "x", Revision: 1}, want: CodeInvalidArgument},
		{name: "min decryption out of range", by: opP, payload: putKey("x", "", 1, 1, 2), want: CodeInvalidArgument},
		{name: "bad name", by: opP, payload: putKey("a.b", "", 1, 1, 1), want: CodeInvalidArgument},
		{name: "long name", by: opP, payload: putKey(longID(65), "", 1, 1, 1), want: CodeInvalidArgument},
		{name: "revision 0", by: opP, payload: putKey("x", "", 0, 1, 1), want: CodeInvalidArgument},
		{name: "bad tenant", by: opP, payload: putKey("A B/x", "A B", 1, 1, 1), want: CodeInvalidArgument},
		{name: "unknown tenant", by: opP, payload: putKey("nosuch/x", "nosuch", 1, 1, 1), want: CodeNotFound},
		{name: "tenant admin creates global", by: acmeAdmin, payload: putKey("x", "", 1, 1, 1), want: CodeForbidden},
		{name: "fake tenant admin", by: acmeAdmin, payload: putKey("acme/x", "acme", 1, 1, 1), want: CodeUnauthenticated},
		{name: "other tenant's admin", by: adminOf("globex"), payload: putKey("acme/x", "acme", 1, 1, 1), want: CodeNotFound},
		{name: "dev principal outside its tenant", by: devP, payload: putKey("acme/x", "acme", 1, 1, 1), want: CodeNotFound},
	}
	cases[CmdGrantKMSKey] = []step{
		{name: "missing key", by: opP, payload: &GrantKMSKeyCmd{Name: "pii", Tenant: "acme"}, want: CodeNotFound,
			check: func(t *testing.T, h *harness, _ *Result) { h.ok(CmdPutKMSKey, opP, putKey("pii", "", 1, 1, 1)) }},
		{name: "grant", by: opP, payload: &GrantKMSKeyCmd{Name: "pii", Tenant: "acme"}, check: func(t *testing.T, h *harness, res *Result) {
			if k := kmsKeyOf(t, h.f, "pii"); !k.UsableBy("acme") || k.UsableBy("globex") {
				t.Fatalf("key after grant = %+v", k)
			}
		}},
		{name: "unknown grantee", by: opP, payload: &GrantKMSKeyCmd{Name: "pii", Tenant: "nosuch"}, want: CodeNotFound},
		{name: "revoke", by: opP, payload: &GrantKMSKeyCmd{Name: "pii", Tenant: "acme", Revoke: true}, check: func(t *testing.T, h *harness, res *Result) {
			if k := kmsKeyOf(t, h.f, "pii"); k.UsableBy("acme") {
				t.Fatalf("key after revoke = %+v", k)
			}
		}},
		{name: "bad tenant", by: opP, payload: &GrantKMSKeyCmd{Name: "pii", Tenant: "A B"}, want: CodeInvalidArgument},
		{name: "bad name", by: opP, payload: &GrantKMSKeyCmd{Name: "", Tenant: "acme"}, want: CodeInvalidArgument},
		{name: "tenant admin", by: acmeAdmin, payload: &GrantKMSKeyCmd{Name: "pii", Tenant: "acme"}, want: CodeForbidden},
		{name: "revoke of a missing key", by: opP, payload: &GrantKMSKeyCmd{Name: "nokey", Tenant: "acme", Revoke: true}, want: CodeNotFound},
	}
	return cases
}

// TestKMSKeyGrantsAndOwnership covers grants, tenant admins managing their own
// keys, and what a tenant's deletion does to its keys and grants.
func TestKMSKeyGrantsAndOwnership(t *testing.T) {
	h := seeded(t)
	ann := h.realUser("acme", "ann", auth.RoleAdmin)
	dev := h.realUser("acme", "dave", auth.RoleDeveloper)
	gina := h.realUser("globex", "gina", auth.RoleAdmin)

	h.ok(CmdPutKMSKey, opP, putKey("shared", "", 1, 1, 1))
	h.ok(CmdPutKMSKey, ann, putKey("acme/pii", "acme", 1, 1, 1))
	if e := lastAudit(t, h.f, "acme"); e.Action != ActionKMSKeyCreated || e.Actor.ID != ann.ID {
		t.Fatalf("acme audit = %+v, want kms_key_created by ann", e)
	}
	h.fails(CmdPutKMSKey, dev, putKey("acme/dev-key", "acme", 1, 1, 1), CodeForbidden)
	// Another tenant's admin: not found, for updates and creations on acme's behalf alike.
	h.fails(CmdPutKMSKey, gina, putKey("acme/pii", "acme", 2, 2, 1), CodeNotFound)
	h.fails(CmdPutKMSKey, gina, putKey("acme/pii", "globex", 2, 2, 1), CodeNotFound)
	h.fails(CmdPutKMSKey, gina, putKey("acme/new", "acme", 1, 1, 1), CodeNotFound)
	// A record named in another tenant's name space is refused before any
	// key is looked at: no oracle of acme's keys for globex.
	h.fails(CmdPutKMSKey, gina, putKey("acme/pii", "globex", 1, 1, 1), CodeInvalidArgument)
	h.fails(CmdPutKMSKey, gina, putKey("acme/nokey", "globex", 1, 1, 1), CodeInvalidArgument)
	// globex's own "pii" does not collide with acme's.
	h.ok(CmdPutKMSKey, gina, putKey("globex/pii", "globex", 1, 1, 1))
	h.fails(CmdPutKMSKey, gina, putKey("globex/pii", "globex", 1, 1, 1), CodeConflict)
	h.fails(CmdPutKMSKey, ann, putKey("shared", "acme", 2, 2, 1), CodeNotFound)
	h.ok(CmdPutKMSKey, ann, putKey("acme/pii", "acme", 2, 2, 1))

	k := h.ok(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "shared", Tenant: "globex"}).(*KMSKey)
	if !k.UsableBy("globex") || k.UsableBy("acme") || k.UsableBy("") == false {
		t.Fatalf("after grant: %+v", k)
	}
	h.ok(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "shared", Tenant: "acme"})
	h.ok(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "shared", Tenant: "acme"}) // idempotent
	if k := kmsKeyOf(t, h.f, "shared"); strings.Join(k.Grants, ",") != "acme,globex" {
		t.Fatalf("grants = %v, want [acme globex]", k.Grants)
	}
	if e := lastAudit(t, h.f, "globex"); e.Action != ActionKMSKeyGranted || e.Metadata["grantee"] != "globex" {
		t.Fatalf("globex audit = %+v, want kms_key_granted", e)
	}
	// A tenant never has an own key and a granted global key of one short
	// name: acme may not create "shared" now, and a global "pii" cannot be
	// granted to acme, which owns acme/pii.
	h.fails(CmdPutKMSKey, ann, putKey("acme/shared", "acme", 1, 1, 1), CodeConflict)
	h.ok(CmdPutKMSKey, opP, putKey("pii", "", 1, 1, 1))
	h.fails(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "pii", Tenant: "acme"}, CodeConflict)
	// Only global keys are granted.
	h.fails(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "acme/pii", Tenant: "acme"}, CodeInvalidArgument)
	h.fails(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "acme/pii", Tenant: "globex"}, CodeInvalidArgument)
	h.fails(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "shared", Tenant: "nosuch"}, CodeNotFound)
	h.fails(CmdGrantKMSKey, ann, &GrantKMSKeyCmd{Name: "shared", Tenant: "globex"}, CodeForbidden)
	h.ok(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "shared", Tenant: "globex", Revoke: true})
	if e := lastAudit(t, h.f, ""); e.Action != ActionKMSKeyGrantRevoked {
		t.Fatalf("cluster audit = %+v, want kms_key_grant_revoked", e)
	}
	if k := kmsKeyOf(t, h.f, "shared"); k.UsableBy("globex") || !k.UsableBy("acme") {
		t.Fatalf("after revoke: %+v", k)
	}

	// Deleting acme: its key passes to the operator, its grants end, and a new
	// tenant under the same id inherits nothing.
	h.ok(CmdDeleteTenant, opP, &DeleteTenantCmd{ID: "acme"})
	k = kmsKeyOf(t, h.f, "acme/pii")
	if k.Tenant != "" || k.FormerTenant != "acme" || k.UsableBy("acme") || k.UsableBy("globex") {
		t.Fatalf("acme's key after deletion = %+v, want the operator's, former tenant acme", k)
	}
	// The operator still rotates it under its stored name; nobody grants it.
	h.ok(CmdPutKMSKey, opP, putKey("acme/pii", "", 3, 3, 1))
	h.fails(CmdGrantKMSKey, opP, &GrantKMSKeyCmd{Name: "acme/pii", Tenant: "globex"}, CodeInvalidArgument)
	if k := kmsKeyOf(t, h.f, "shared"); len(k.Grants) != 0 {
		t.Fatalf("grants to a deleted tenant remain: %v", k.Grants)
	}
	h.createTenant("acme", "free")
	var usable []string
	view(t, h.f, func(r *Reader) {
		for _, k := range r.KMSKeys() {
			if k.UsableBy("acme") {
				usable = append(usable, k.Name)
			}
		}
	})
	if len(usable) != 0 {
		t.Fatalf("a re-created acme may use %v", usable)
	}
	verifyAll(t, h.f)
}
