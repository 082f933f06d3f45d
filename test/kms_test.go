package test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/enforcement"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/kms"
)

// The KMS service end to end (DESIGN.md §6, §10): keys created through the
// API are replicated, so a ciphertext made on one server opens on another;
// rotation, rewrap and min_decryption_version; tenant isolation (another
// tenant's key is not found) and the role matrix; the audit trail.

type kmsItem struct {
	Ciphertext string `json:"ciphertext"`
	Plaintext  string `json:"plaintext"`
	Key        string `json:"key"`
	KeyVersion int    `json:"key_version"`
	Error      *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type kmsCtx struct {
	Tenant string `json:"tenant,omitempty"`
	Field  string `json:"field"`
}

func b64std(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func (e *idEnv) kmsEncrypt(node int, c cred, key, plaintext string, ctx kmsCtx) kmsItem {
	e.t.Helper()
	var out kmsItem
	e.must(200, node, "POST", "/v1/kms/encrypt", c, map[string]any{"key": key, "plaintext": b64std(plaintext), "context": ctx}, &out)
	if !strings.HasPrefix(out.Ciphertext, "asg:v1:") || out.KeyVersion < 1 {
		e.t.Fatalf("encrypt answered %+v", out)
	}
	return out
}

func (e *idEnv) kmsDecrypt(node int, c cred, ct string, ctx kmsCtx) string {
	e.t.Helper()
	var out kmsItem
	e.must(200, node, "POST", "/v1/kms/decrypt", c, map[string]any{"ciphertext": ct, "context": ctx}, &out)
	pt, err := base64.StdEncoding.DecodeString(out.Plaintext)
	if err != nil {
		e.t.Fatalf("decrypt answered %+v", out)
	}
	return string(pt)
}

// waitKMSKey waits until every server has applied key name at revision rev
// (a follower serves field operations from its own replica).
func (e *idEnv) waitKMSKey(name string, rev uint64) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, fmt.Sprintf("key %s revision %d on every server", name, rev), func() bool {
		for _, nd := range e.nodes {
			var k *fsm.KMSKey
			_ = nd.srv.FSM().View(func(r *fsm.Reader) error { k, _ = r.KMSKey(name); return nil })
			if k == nil || k.Revision < rev {
				return false
			}
		}
		return true
	})
}

func errCode(t testing.TB, r reply) string {
	t.Helper()
	var b struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(r.body, &b); err != nil || b.Error.Code == "" {
		t.Fatalf("not a JSON error: %s", r)
	}
	return b.Error.Code
}

func TestKMSEndToEnd(t *testing.T) {
	e := idCluster(t, 3, nil)
	op := e.opCred()
	for _, ten := range []string{"acme", "globex"} {
		e.must(201, 0, "POST", "/v1/tenants", op, map[string]string{"id": ten, "name": ten, "tier": "professional"}, nil)
	}
	key := func(tenant, role string) cred {
		k := e.createKey(tenant, op, tenant+"-"+role, role, "")
		return cred{name: tenant + "/" + role, apiKey: k.Key}
	}
	acmeAdmin, acmeDev, acmeRO := key("acme", "admin"), key("acme", "developer"), key("acme", "readonly")
	globexAdmin := key("globex", "admin")

	// Key management: a tenant admin creates its tenant's key (on a
	// follower: forwarded to the leader); developers and readonly may not.
	var kv api.KMSKeyView
	e.must(201, 2, "POST", "/v1/kms/keys", acmeAdmin, map[string]any{"name": "acme-pii"}, &kv)
	if kv.Tenant != "acme" || kv.Backend != "local" || kv.LatestVersion != 1 || len(kv.Versions) != 1 {
		t.Fatalf("created key = %+v", kv)
	}
	if r := e.call(1, "POST", "/v1/kms/keys", acmeDev, map[string]any{"name": "dev-key"}); r.status != 403 {
		t.Fatalf("developer creating a key: %s, want 403", r)
	}
	if r := e.call(1, "POST", "/v1/kms/keys", acmeAdmin, map[string]any{"name": "acme-pii"}); r.status != 409 {
		t.Fatalf("duplicate key: %s, want 409", r)
	}
	if r := e.call(1, "POST", "/v1/kms/keys", acmeAdmin, map[string]any{"name": "x", "tenant": "globex"}); r.status != 404 {
		t.Fatalf("acme admin creating a key for globex: %s, want 404", r)
	}
	if r := e.call(1, "POST", "/v1/kms/keys", acmeAdmin, map[string]any{"name": "bad.name"}); r.status != 400 || errCode(t, r) != "invalid_argument" {
		t.Fatalf("bad key name: %s, want 400", r)
	}
	kv = api.KMSKeyView{}
	e.must(201, 0, "POST", "/v1/kms/keys", op, map[string]any{"name": "shared", "rotation_period": "720h"}, &kv)
	if kv.Tenant != "" || kv.RotationPeriod != "720h0m0s" || kv.NextRotation.IsZero() {
		t.Fatalf("global key = %+v", kv)
	}

	// Encrypt on one server, decrypt on each of the others (they read the
	// replicated record; wait until each has applied it).
	e.waitKMSKey("acme/acme-pii", 1)
	email := "ann@acme.test"
	c1 := e.kmsEncrypt(1, acmeDev, "acme-pii", email, kmsCtx{Field: "email"})
	if c1.KeyVersion != 1 || c1.Key != "acme-pii" || strings.Contains(c1.Ciphertext, email) {
		t.Fatalf("ciphertext = %+v", c1)
	}
	for _, n := range []int{0, 2} {
		if got := e.kmsDecrypt(n, acmeDev, c1.Ciphertext, kmsCtx{Tenant: "acme", Field: "email"}); got != email {
			t.Fatalf("decrypt on node %d = %q, want %q", n, got, email)
		}
	}
	// The context is authenticated: another field fails.
	if r := e.call(2, "POST", "/v1/kms/decrypt", acmeDev, map[string]any{"ciphertext": c1.Ciphertext, "context": kmsCtx{Field: "phone"}}); r.status != 400 {
		t.Fatalf("decrypt with another field: %s, want 400", r)
	}

	// Rotation: new encryptions use version 2, version 1 still decrypts.
	e.must(200, 1, "POST", "/v1/kms/keys/acme-pii/rotate", acmeAdmin, nil, &kv)
	if kv.LatestVersion != 2 {
		t.Fatalf("after rotate: %+v", kv)
	}
	if r := e.call(1, "POST", "/v1/kms/keys/acme-pii/rotate", acmeDev, nil); r.status != 403 {
		t.Fatalf("developer rotating: %s, want 403", r)
	}
	waitFor(t, 10*time.Second, "every server to use version 2", func() bool {
		for n := range e.nodes {
			var out kmsItem
			r := e.call(n, "POST", "/v1/kms/encrypt", acmeDev, map[string]any{"key": "acme-pii", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}})
			if r.status != 200 || json.Unmarshal(r.body, &out) != nil || out.KeyVersion != 2 {
				return false
			}
		}
		return true
	})
	c2 := e.kmsEncrypt(0, acmeDev, "acme-pii", email, kmsCtx{Field: "email"})
	if c2.KeyVersion != 2 {
		t.Fatalf("encryption after rotation used version %d", c2.KeyVersion)
	}
	if got := e.kmsDecrypt(2, acmeDev, c1.Ciphertext, kmsCtx{Field: "email"}); got != email {
		t.Fatalf("old ciphertext after rotation = %q", got)
	}

	// Rewrap moves the old ciphertext to version 2 without returning plaintext.
	var rw kmsItem
	rr := e.must(200, 2, "POST", "/v1/kms/rewrap", acmeDev, map[string]any{"ciphertext": c1.Ciphertext, "context": kmsCtx{Field: "email"}}, &rw)
	if rw.KeyVersion != 2 || rw.Plaintext != "" || bytes.Contains(rr.body, []byte(b64std(email))) || rw.Ciphertext == c1.Ciphertext {
		t.Fatalf("rewrap answered %s", rr)
	}
	if got := e.kmsDecrypt(0, acmeDev, rw.Ciphertext, kmsCtx{Field: "email"}); got != email {
		t.Fatalf("rewrapped ciphertext decrypts to %q", got)
	}

	// min_decryption_version 2 retires version 1.
	e.must(200, 0, "PATCH", "/v1/kms/keys/acme-pii", acmeAdmin, map[string]any{"min_decryption_version": 2}, &kv)
	if kv.MinDecryptionVersion != 2 {
		t.Fatalf("after PATCH: %+v", kv)
	}
	if r := e.call(0, "PATCH", "/v1/kms/keys/acme-pii", acmeAdmin, map[string]any{"min_decryption_version": 3}); r.status != 400 {
		t.Fatalf("min_decryption_version past the newest version: %s, want 400", r)
	}
	waitFor(t, 10*time.Second, "every server to refuse version 1", func() bool {
		for n := range e.nodes {
			r := e.call(n, "POST", "/v1/kms/decrypt", acmeDev, map[string]any{"ciphertext": c1.Ciphertext, "context": kmsCtx{Field: "email"}})
			if r.status != 400 || !strings.Contains(string(r.body), "retired") {
				return false
			}
		}
		return true
	})
	if r := e.call(1, "POST", "/v1/kms/rewrap", acmeDev, map[string]any{"ciphertext": c1.Ciphertext, "context": kmsCtx{Field: "email"}}); r.status != 400 {
		t.Fatalf("rewrap of a retired version: %s, want 400", r)
	}
	if got := e.kmsDecrypt(1, acmeDev, c2.Ciphertext, kmsCtx{Field: "email"}); got != email {
		t.Fatalf("version 2 ciphertext = %q", got)
	}

	// Tenant isolation: globex cannot see or use acme's key, nor act in
	// acme's context; the answers are those of a key that does not exist.
	notFound := func(r reply, what string) {
		t.Helper()
		if r.status != 404 || errCode(t, r) != "not_found" {
			t.Fatalf("%s: %s, want 404", what, r)
		}
	}
	notFound(e.call(1, "POST", "/v1/kms/decrypt", globexAdmin, map[string]any{"ciphertext": c2.Ciphertext, "context": kmsCtx{Field: "email"}}), "globex decrypting acme's ciphertext")
	notFound(e.call(1, "POST", "/v1/kms/encrypt", globexAdmin, map[string]any{"key": "acme-pii", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}}), "globex encrypting with acme's key")
	notFound(e.call(1, "POST", "/v1/kms/encrypt", globexAdmin, map[string]any{"key": "no-such-key", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}}), "a key that does not exist")
	notFound(e.call(1, "POST", "/v1/kms/encrypt", acmeDev, map[string]any{"key": "acme-pii", "plaintext": b64std("x"), "context": kmsCtx{Tenant: "globex", Field: "f"}}), "acme in globex's context")
	notFound(e.call(1, "GET", "/v1/kms/keys/acme-pii", globexAdmin, nil), "globex reading acme's key")
	notFound(e.call(1, "POST", "/v1/kms/keys/acme-pii/rotate", globexAdmin, nil), "globex rotating acme's key")
	notFound(e.call(1, "POST", "/v1/kms/encrypt", globexAdmin, map[string]any{"key": "shared", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}}), "globex using an ungranted global key")

	// The operator grants the global key to both tenants; each can use it in
	// its own context only, so acme's ciphertext does not open for globex.
	for _, ten := range []string{"acme", "globex"} {
		e.must(200, 2, "POST", "/v1/kms/keys/shared/grants", op, map[string]string{"tenant": ten}, &kv)
	}
	if r := e.call(2, "POST", "/v1/kms/keys/shared/grants", acmeAdmin, map[string]string{"tenant": "acme"}); r.status != 403 {
		t.Fatalf("tenant admin granting: %s, want 403", r)
	}
	var sharedCT kmsItem
	waitFor(t, 10*time.Second, "the grant to reach node 1", func() bool {
		r := e.call(1, "POST", "/v1/kms/encrypt", acmeDev, map[string]any{"key": "shared", "plaintext": b64std(email), "context": kmsCtx{Field: "email"}})
		return r.status == 200 && json.Unmarshal(r.body, &sharedCT) == nil
	})
	if r := e.call(0, "POST", "/v1/kms/decrypt", globexAdmin, map[string]any{"ciphertext": sharedCT.Ciphertext, "context": kmsCtx{Field: "email"}}); r.status != 400 {
		t.Fatalf("globex decrypting acme's ciphertext under a shared key: %s, want 400 (bound to acme)", r)
	}
	var list struct {
		Keys []api.KMSKeyView `json:"keys"`
	}
	e.must(200, 0, "GET", "/v1/kms/keys", globexAdmin, nil, &list)
	if len(list.Keys) != 1 || list.Keys[0].Name != "shared" || len(list.Keys[0].Grants) != 0 {
		t.Fatalf("globex's key list = %+v, want only shared, without its grants", list.Keys)
	}
	e.must(200, 0, "DELETE", "/v1/kms/keys/shared/grants/globex", op, nil, nil)
	waitFor(t, 10*time.Second, "the revocation to reach node 1", func() bool {
		return e.call(1, "POST", "/v1/kms/encrypt", globexAdmin, map[string]any{"key": "shared", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}}).status == 404
	})

	// Role matrix of the field operations: Write needed.
	ro := e.call(0, "POST", "/v1/kms/encrypt", acmeRO, map[string]any{"key": "acme-pii", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}})
	if ro.status != 403 {
		t.Fatalf("readonly encrypting: %s, want 403", ro)
	}
	e.must(200, 0, "GET", "/v1/kms/keys/acme-pii", acmeRO, nil, &kv)
	if r := e.call(0, "POST", "/v1/kms/encrypt", cred{name: "none"}, map[string]any{"key": "acme-pii", "plaintext": b64std("x")}); r.status != 401 {
		t.Fatalf("no credential: %s, want 401", r)
	}

	// Batches: each item answers for itself.
	var batch struct {
		Items []kmsItem `json:"items"`
	}
	e.must(200, 1, "POST", "/v1/kms/encrypt", acmeDev, map[string]any{"key": "acme-pii", "context": kmsCtx{Field: "email"},
		"items": []map[string]any{{"plaintext": b64std("a@x")}, {"plaintext": b64std("b@x")}, {"plaintext": b64std("c@x"), "context": kmsCtx{Field: "phone"}}}}, &batch)
	if len(batch.Items) != 3 {
		t.Fatalf("batch encrypt: %+v", batch)
	}
	cts := []string{batch.Items[0].Ciphertext, batch.Items[1].Ciphertext, batch.Items[2].Ciphertext, batch.Items[1].Ciphertext}
	batchRid := e.must(200, 2, "POST", "/v1/kms/decrypt", acmeDev, map[string]any{"context": kmsCtx{Field: "email"},
		"items": []map[string]any{{"ciphertext": cts[0]}, {"ciphertext": cts[1]}, {"ciphertext": cts[2], "context": kmsCtx{Field: "phone"}}, {"ciphertext": cts[3], "context": kmsCtx{Field: "other"}}}}, &batch).rid
	if len(batch.Items) != 4 || batch.Items[3].Error == nil || batch.Items[3].Error.Code != "invalid_argument" {
		t.Fatalf("batch decrypt: %+v", batch)
	}
	for i, want := range []string{"a@x", "b@x", "c@x"} {
		if pt, _ := base64.StdEncoding.DecodeString(batch.Items[i].Plaintext); string(pt) != want || batch.Items[i].Error != nil {
			t.Fatalf("batch item %d = %+v, want %q", i, batch.Items[i], want)
		}
	}
	if r := e.call(1, "POST", "/v1/kms/decrypt", acmeDev, map[string]any{"ciphertext": "asg:v1:AAAA"}); r.status != 400 || !strings.Contains(string(r.body), "malformed") {
		t.Fatalf("malformed ciphertext: %s, want 400", r)
	}
	if r := e.call(1, "POST", "/v1/kms/encrypt", acmeDev, map[string]any{"key": "acme-pii", "items": []any{}}); r.status != 400 {
		t.Fatalf("empty batch: %s, want 400", r)
	}

	// Bad input: JSON errors, never a panic or a 500.
	for _, bad := range []struct {
		body any
		want int
	}{
		{map[string]any{"key": "acme-pii", "plaintext": "not base64!", "context": kmsCtx{Field: "f"}}, 400},
		{map[string]any{"key": "acme-pii", "plaintext": b64std("x"), "unknown": 1}, 400},
		{map[string]any{"key": "acme-pii", "plaintext": b64std("x"), "items": []map[string]string{{"plaintext": b64std("y")}}}, 400},
		{map[string]any{"key": "acme-pii", "items": make([]map[string]string, 1001)}, 400},
		{map[string]any{"key": "acme-pii", "plaintext": strings.Repeat("A", 2<<20)}, 413},
		{map[string]any{"plaintext": b64std("x")}, 400},
		{map[string]any{"key": "acme-pii", "plaintext": b64std("x"), "context": kmsCtx{Field: strings.Repeat("f", 300)}}, 400},
		{"a string", 400},
	} {
		r := e.call(1, "POST", "/v1/kms/encrypt", acmeDev, bad.body)
		if r.status != bad.want || errCode(t, r) == "" {
			t.Fatalf("bad encrypt input: %s, want %d", r, bad.want)
		}
	}
	if r := e.call(1, "POST", "/v1/kms/decrypt", acmeDev, map[string]any{"ciphertext": truncateCiphertext(t, c2.Ciphertext, 6)}); r.status != 400 || !strings.Contains(string(r.body), "truncated") {
		t.Fatalf("truncated ciphertext: %s, want 400 truncated", r)
	}

	// Data keys: the plaintext key once, and its wrapping that decrypts to it.
	var dk kmsItem
	e.must(200, 0, "POST", "/v1/kms/datakey", acmeDev, map[string]any{"key": "acme-pii", "context": kmsCtx{Field: "blob"}}, &dk)
	raw, _ := base64.StdEncoding.DecodeString(dk.Plaintext)
	if len(raw) != 32 || dk.KeyVersion != 2 {
		t.Fatalf("datakey = %+v", dk)
	}
	if got := e.kmsDecrypt(2, acmeDev, dk.Ciphertext, kmsCtx{Field: "blob"}); got != string(raw) {
		t.Fatal("the data key's ciphertext does not decrypt to the data key")
	}

	// Audit: key management and every field operation, never plaintext.
	waitFor(t, 30*time.Second, "the KMS audit entries", func() bool {
		es := auditOf(e.leader(), "acme", batchRid)
		return len(es) == 1 && es[0].Action == fsm.ActionKMSDecrypt && es[0].Outcome == fsm.OutcomePartial &&
			es[0].Metadata["count"] == "4" && es[0].Metadata["failed"] == "1" && es[0].Metadata["operation"] == "decrypt" &&
			es[0].Metadata["key"] == "acme/acme-pii" && es[0].Resource == "kms-key/acme/acme-pii" && es[0].Error == "invalid_argument"
	})
	seen := map[fsm.Action]bool{}
	_ = e.leader().srv.FSM().View(func(r *fsm.Reader) error {
		for _, ten := range []string{"acme", "", "globex"} {
			es, _ := r.Audit(fsm.AuditQuery{Tenant: ten, Limit: 1000})
			for _, en := range es {
				seen[en.Action] = true
				b, _ := json.Marshal(en)
				for _, secret := range []string{email, b64std(email), "a@x", b64std("a@x"), dk.Plaintext} {
					if bytes.Contains(b, []byte(secret)) {
						t.Errorf("audit entry holds plaintext %q: %s", secret, b)
					}
				}
			}
		}
		return nil
	})
	for _, a := range []fsm.Action{fsm.ActionKMSKeyCreated, fsm.ActionKMSKeyRotated, fsm.ActionConfigChanged, fsm.ActionKMSKeyGranted,
		fsm.ActionKMSKeyGrantRevoked, fsm.ActionKMSOperation, fsm.ActionKMSDecrypt} {
		if !seen[a] {
			t.Errorf("no %s audit entry", a)
		}
	}

	// Metrics: items per operation and outcome, the data-key cache, backend reachability.
	m := e.must(200, 1, "GET", "/metrics", op, nil, nil)
	for _, want := range []string{`allsource_kms_items_total{operation="encrypt",outcome="ok"}`, `allsource_kms_items_total{operation="decrypt",outcome="error"}`,
		"allsource_kms_datakey_cache_hits_total", `allsource_kms_backend_up{backend="local"} 1`} {
		if !bytes.Contains(m.body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// /health reports the KMS backends.
	var h api.Health
	e.must(200, 1, "GET", "/health", cred{}, nil, &h)
	if len(h.KMS) != 1 || h.KMS[0].Backend != "local" || !h.KMS[0].OK {
		t.Fatalf("health kms = %+v", h.KMS)
	}
}

// TestKMSScheduledRotation: the leader rotates a key once its rotation
// period has elapsed on the (injected) clock, through raft, audited as the
// cluster.
func TestKMSScheduledRotation(t *testing.T) {
	clk := enforcement.NewManualClock(time.Now().UTC()) // shared by the servers of the test
	e := idCluster(t, 1, func(nd *inprocNode) {
		nd.cfg.KMS.Clock = clk.Now
		nd.cfg.KMS.RotationCheck = 20 * time.Millisecond
	})
	op := e.opCred()
	var kv api.KMSKeyView
	e.must(201, 0, "POST", "/v1/kms/keys", op, map[string]any{"name": "rotating", "rotation_period": "1h"}, &kv)
	e.must(201, 0, "POST", "/v1/kms/keys", op, map[string]any{"name": "manual"}, nil)
	ct := e.kmsEncrypt(0, op, "rotating", "secret", kmsCtx{Field: "f"})
	clk.Advance(59 * time.Minute)
	// Not due yet: give the loop a few rounds (polling the state, never sleeping on a guess).
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		e.must(200, 0, "GET", "/v1/kms/keys/rotating", op, nil, &kv)
		if kv.LatestVersion != 1 {
			t.Fatalf("rotated before the period elapsed: %+v", kv)
		}
	}
	clk.Advance(2 * time.Minute)
	waitFor(t, 10*time.Second, "the scheduled rotation", func() bool {
		e.must(200, 0, "GET", "/v1/kms/keys/rotating", op, nil, &kv)
		return kv.LatestVersion == 2
	})
	if !kv.NextRotation.Equal(kv.Versions[1].CreatedAt.Add(time.Hour)) {
		t.Fatalf("next rotation %v, want an hour after version 2 (%v)", kv.NextRotation, kv.Versions[1].CreatedAt)
	}
	var manual api.KMSKeyView
	e.must(200, 0, "GET", "/v1/kms/keys/manual", op, nil, &manual)
	if manual.LatestVersion != 1 {
		t.Fatalf("a key without a rotation period was rotated: %+v", manual)
	}
	if got := e.kmsDecrypt(0, op, ct.Ciphertext, kmsCtx{Field: "f"}); got != "secret" {
		t.Fatalf("old ciphertext after scheduled rotation = %q", got)
	}
	var rotated []*fsm.AuditEntry
	_ = e.leader().srv.FSM().View(func(r *fsm.Reader) error {
		rotated, _ = r.Audit(fsm.AuditQuery{Tenant: "", Action: fsm.ActionKMSKeyRotated, Limit: 10})
		return nil
	})
	if len(rotated) != 1 || rotated[0].Actor.Kind != fsm.PrincipalSystem || rotated[0].Actor.Name != "kms-rotation" || rotated[0].Resource != "kms-key/rotating" {
		t.Fatalf("rotation audit = %s", fmt.Sprint(rotated))
	}
}

// TestKMSTenantKeyNamespaces: key names are per tenant. Two tenants each
// create "payments" (no "name taken" oracle across tenants), each uses its
// own, neither reaches the other's by any spelling, and every refusal is the
// answer for a key that does not exist. The operator sees both under their
// stored names "<tenant>/payments" and addresses them with ?tenant= or an
// escaped slash.
func TestKMSTenantKeyNamespaces(t *testing.T) {
	e := idCluster(t, 3, nil)
	op := e.opCred()
	for _, ten := range []string{"acme", "globex"} {
		e.must(201, 0, "POST", "/v1/tenants", op, map[string]string{"id": ten, "name": ten, "tier": "professional"}, nil)
	}
	admin := func(tenant string) cred {
		k := e.createKey(tenant, op, tenant+"-admin", "admin", "")
		return cred{name: tenant + "/admin", apiKey: k.Key}
	}
	acme, globex := admin("acme"), admin("globex")

	var ka, kg api.KMSKeyView
	e.must(201, 1, "POST", "/v1/kms/keys", acme, map[string]any{"name": "payments"}, &ka)
	e.must(201, 2, "POST", "/v1/kms/keys", globex, map[string]any{"name": "payments"}, &kg)
	if ka.Name != "payments" || ka.Tenant != "acme" || kg.Name != "payments" || kg.Tenant != "globex" {
		t.Fatalf("created keys = %+v and %+v, want each tenant's own payments by its short name", ka, kg)
	}
	// A duplicate in the tenant's own name space is still a conflict.
	if r := e.call(0, "POST", "/v1/kms/keys", acme, map[string]any{"name": "payments"}); r.status != 409 {
		t.Fatalf("acme creating payments twice: %s, want 409", r)
	}
	// A name with a tenant prefix is not a short name.
	if r := e.call(0, "POST", "/v1/kms/keys", acme, map[string]any{"name": "acme/x"}); r.status != 400 {
		t.Fatalf("acme creating acme/x: %s, want 400", r)
	}
	e.waitKMSKey("acme/payments", 1)
	e.waitKMSKey("globex/payments", 1)

	// Each encrypts and decrypts with its own key, on any server.
	ca := e.kmsEncrypt(0, acme, "payments", "acme-card", kmsCtx{Field: "card"})
	cg := e.kmsEncrypt(1, globex, "payments", "globex-card", kmsCtx{Field: "card"})
	if ca.Key != "payments" || cg.Key != "payments" {
		t.Fatalf("encrypt answered keys %q and %q, want the short name", ca.Key, cg.Key)
	}
	if got := e.kmsDecrypt(2, acme, ca.Ciphertext, kmsCtx{Field: "card"}); got != "acme-card" {
		t.Fatalf("acme decrypts %q", got)
	}
	if got := e.kmsDecrypt(0, globex, cg.Ciphertext, kmsCtx{Field: "card"}); got != "globex-card" {
		t.Fatalf("globex decrypts %q", got)
	}
	var dec kmsItem
	e.must(200, 1, "POST", "/v1/kms/decrypt", acme, map[string]any{"key": "payments", "ciphertext": ca.Ciphertext, "context": kmsCtx{Field: "card"}}, &dec)
	if dec.Key != "payments" {
		t.Fatalf("decrypt with the key named answered %+v", dec)
	}

	// The answer for a key that does not exist, to compare with.
	type errBody struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	body := func(r reply) errBody {
		t.Helper()
		var b errBody
		if err := json.Unmarshal(r.body, &b); err != nil {
			t.Fatalf("not a JSON error: %s", r)
		}
		return b
	}
	asMissing := func(r reply, spelled, what string) {
		t.Helper()
		want := errBody{}
		want.Error.Code, want.Error.Message = "not_found", fmt.Sprintf("key %q not found", spelled)
		if r.status != 404 || body(r) != want {
			t.Fatalf("%s: %s, want 404 %+v (a key that does not exist)", what, r, want)
		}
	}
	// globex reaches acme's key by no spelling.
	for _, spelled := range []string{"acme/payments", "../acme/payments", "acme%2Fpayments", "/acme/payments", "acme//payments", "./payments/../acme/payments"} {
		r := e.call(1, "POST", "/v1/kms/encrypt", globex, map[string]any{"key": spelled, "plaintext": b64std("x"), "context": kmsCtx{Field: "card"}})
		asMissing(r, spelled, "globex encrypting with "+spelled)
		r = e.call(1, "POST", "/v1/kms/decrypt", globex, map[string]any{"key": spelled, "ciphertext": ca.Ciphertext, "context": kmsCtx{Field: "card"}})
		asMissing(r, spelled, "globex decrypting with "+spelled)
	}
	for _, path := range [][2]string{{"acme%2Fpayments", ""}, {"..%2Facme%2Fpayments", ""}, {"payments", "?tenant=acme"}, {"acme%2Fpayments", "?tenant=globex"}} {
		spelled := strings.ReplaceAll(path[0], "%2F", "/")
		asMissing(e.call(1, "GET", "/v1/kms/keys/"+path[0]+path[1], globex, nil), spelled, "globex reading "+path[0]+path[1])
		asMissing(e.call(1, "POST", "/v1/kms/keys/"+path[0]+"/rotate"+path[1], globex, nil), spelled, "globex rotating "+path[0]+path[1])
		asMissing(e.call(1, "PATCH", "/v1/kms/keys/"+path[0]+path[1], globex, map[string]any{"min_decryption_version": 1}), spelled, "globex changing "+path[0]+path[1])
	}
	// A raw "../" path is refused before any key is looked at: the same
	// answer whether the key exists or not.
	r1, r2 := e.call(1, "GET", "/v1/kms/keys/../acme/payments", globex, nil), e.call(1, "GET", "/v1/kms/keys/../zzzz/payments", globex, nil)
	if r1.status/100 == 2 || r1.status != r2.status || body(r1) != body(r2) {
		t.Fatalf("globex reading ../acme/payments: %s; ../zzzz/payments: %s", r1, r2)
	}
	// acme's ciphertext under globex: refused as for a key that does not
	// exist, word for word like a ciphertext naming a tenant that has none.
	asMissing(e.call(2, "POST", "/v1/kms/decrypt", globex, map[string]any{"ciphertext": ca.Ciphertext, "context": kmsCtx{Tenant: "globex", Field: "card"}}),
		"acme/payments", "globex decrypting acme's ciphertext")
	asMissing(e.call(2, "POST", "/v1/kms/rewrap", globex, map[string]any{"ciphertext": ca.Ciphertext, "context": kmsCtx{Field: "card"}}),
		"acme/payments", "globex rewrapping acme's ciphertext")
	parsed, err := kms.ParseCiphertext([]byte(ca.Ciphertext))
	if err != nil {
		t.Fatal(err)
	}
	parsed.KeyName = "acmf/payments"
	asMissing(e.call(2, "POST", "/v1/kms/decrypt", globex, map[string]any{"ciphertext": kms.EncodeText(parsed.Marshal()), "context": kmsCtx{Field: "card"}}),
		"acmf/payments", "a ciphertext naming a tenant without keys")
	// Naming its own key with acme's ciphertext: another key.
	if r := e.call(2, "POST", "/v1/kms/decrypt", globex, map[string]any{"key": "payments", "ciphertext": ca.Ciphertext, "context": kmsCtx{Field: "card"}}); r.status != 400 || bytes.Contains(r.body, []byte("acme-card")) {
		t.Fatalf("globex decrypting acme's ciphertext with its own payments: %s, want 400", r)
	}
	// globex's list shows its own key only, by short name.
	var list struct {
		Keys []api.KMSKeyView `json:"keys"`
	}
	e.must(200, 0, "GET", "/v1/kms/keys", globex, nil, &list)
	if len(list.Keys) != 1 || list.Keys[0].Name != "payments" || list.Keys[0].Tenant != "globex" {
		t.Fatalf("globex's keys = %+v", list.Keys)
	}

	// The operator sees both under their stored names and addresses them.
	e.must(200, 0, "GET", "/v1/kms/keys", op, nil, &list)
	var names []string
	for _, k := range list.Keys {
		names = append(names, k.Name+"@"+k.Tenant)
	}
	if strings.Join(names, ",") != "acme/payments@acme,globex/payments@globex" {
		t.Fatalf("operator's keys = %v", names)
	}
	var kv api.KMSKeyView
	e.must(200, 0, "GET", "/v1/kms/keys/payments?tenant=acme", op, nil, &kv)
	if kv.Name != "acme/payments" || kv.Tenant != "acme" {
		t.Fatalf("operator reading payments?tenant=acme = %+v", kv)
	}
	e.must(200, 0, "POST", "/v1/kms/keys/globex%2Fpayments/rotate", op, nil, &kv)
	if kv.Name != "globex/payments" || kv.LatestVersion != 2 {
		t.Fatalf("operator rotating globex%%2Fpayments = %+v", kv)
	}
	if r := e.call(0, "GET", "/v1/kms/keys/payments", op, nil); r.status != 404 {
		t.Fatalf("operator reading a global payments that does not exist: %s, want 404", r)
	}
	if r := e.call(0, "GET", "/v1/kms/keys/payments?tenant=Not+A+Tenant", op, nil); r.status != 400 {
		t.Fatalf("operator with a bad tenant parameter: %s, want 400", r)
	}
	if got := e.kmsDecrypt(0, op, ca.Ciphertext, kmsCtx{Tenant: "acme", Field: "card"}); got != "acme-card" {
		t.Fatalf("operator decrypting acme's ciphertext = %q", got)
	}
	e.waitKMSKey("globex/payments", 2)
	oc := e.kmsEncrypt(0, op, "globex/payments", "by-operator", kmsCtx{Tenant: "globex", Field: "card"})
	if oc.Key != "globex/payments" || e.kmsDecrypt(1, globex, oc.Ciphertext, kmsCtx{Field: "card"}) != "by-operator" {
		t.Fatalf("operator encrypting for globex = %+v", oc)
	}

	// Grants are of global keys only, and never shadow a tenant's own key.
	e.must(201, 0, "POST", "/v1/kms/keys", op, map[string]any{"name": "payments"}, nil)
	if r := e.call(0, "POST", "/v1/kms/keys/payments/grants", op, map[string]string{"tenant": "acme"}); r.status != 409 {
		t.Fatalf("granting global payments to acme, which has its own: %s, want 409", r)
	}
	if r := e.call(0, "POST", "/v1/kms/keys/payments/grants?tenant=acme", op, map[string]string{"tenant": "globex"}); r.status != 400 {
		t.Fatalf("granting acme's key: %s, want 400", r)
	}
	e.must(201, 0, "POST", "/v1/kms/keys", op, map[string]any{"name": "shared"}, nil)
	e.must(200, 0, "POST", "/v1/kms/keys/shared/grants", op, map[string]string{"tenant": "acme"}, nil)
	if r := e.call(0, "POST", "/v1/kms/keys", acme, map[string]any{"name": "shared"}); r.status != 409 {
		t.Fatalf("acme creating shared while granted the global shared: %s, want 409", r)
	}
	e.must(201, 0, "POST", "/v1/kms/keys", globex, map[string]any{"name": "shared"}, nil)
	waitFor(t, 10*time.Second, "the grant on node 1", func() bool {
		var out kmsItem
		r := e.call(1, "POST", "/v1/kms/encrypt", acme, map[string]any{"key": "shared", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}})
		return r.status == 200 && json.Unmarshal(r.body, &out) == nil && out.Key == "shared"
	})
}

// truncateCiphertext drops the last n bytes of a text-form ciphertext's
// binary form (cutting the text itself may leave an invalid base64 length).
func truncateCiphertext(t testing.TB, ct string, n int) string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(ct, kms.TextPrefix))
	if err != nil || len(raw) <= n {
		t.Fatalf("not a text ciphertext: %q", ct)
	}
	return kms.TextPrefix + base64.RawURLEncoding.EncodeToString(raw[:len(raw)-n])
}

// TestKMSReadYourWritesOnFollowers: a follower serves field operations from
// its own replica, yet a key created, or a version rotated in, through the
// leader is usable on a follower at once. A follower that has not yet heard
// that the write committed asks the leader for its commit index and catches
// up before it answers "not found" (api/catchup.go); before, it answered 404
// until the leader's next message reached it. The same holds for a grant.
func TestKMSReadYourWritesOnFollowers(t *testing.T) {
	e := idCluster(t, 3, nil)
	op := e.opCred()
	lead := e.leader()
	var li int
	var followers []int
	for i, nd := range e.nodes {
		if nd == lead {
			li = i
		} else {
			followers = append(followers, i)
		}
	}
	for i := range 20 {
		name := fmt.Sprintf("ryw-%d", i)
		f, g := followers[i%2], followers[1-i%2]
		e.must(201, li, "POST", "/v1/kms/keys", op, map[string]any{"name": name}, nil)
		ct := e.kmsEncrypt(f, op, name, "one", kmsCtx{Field: "f"})
		if ct.KeyVersion != 1 {
			t.Fatalf("encrypt on a follower right after the create: %+v", ct)
		}
		// Rotate, encrypt with the new version on the leader, and open that
		// ciphertext on the follower that has seen neither.
		e.must(200, li, "POST", "/v1/kms/keys/"+name+"/rotate", op, nil, nil)
		ct2 := e.kmsEncrypt(li, op, name, "two", kmsCtx{Field: "f"})
		if ct2.KeyVersion != 2 {
			t.Fatalf("encrypt after the rotation: %+v", ct2)
		}
		if got := e.kmsDecrypt(g, op, ct2.Ciphertext, kmsCtx{Field: "f"}); got != "two" {
			t.Fatalf("decrypt of a version-2 ciphertext on a follower = %q", got)
		}
	}
	// A grant added through the leader is usable on a follower at once: a
	// global key granted to acme, used by acme's admin.
	e.must(201, li, "POST", "/v1/tenants", op, map[string]string{"id": "acme", "name": "acme", "tier": "professional"}, nil)
	acme := cred{name: "acme/admin", apiKey: e.createKey("acme", op, "acme-admin", "admin", "").Key}
	for i := range 10 {
		name := fmt.Sprintf("granted-%d", i)
		var kv api.KMSKeyView
		e.must(201, li, "POST", "/v1/kms/keys", op, map[string]any{"name": name}, &kv)
		e.waitKMSKey(name, kv.Revision) // every server knows the key; only the grant is new
		ct := e.kmsEncrypt(li, op, name, "x", kmsCtx{Tenant: "acme", Field: "f"})
		e.must(200, li, "POST", "/v1/kms/keys/"+name+"/grants", op, map[string]string{"tenant": "acme"}, nil)
		// Named by the ciphertext: the follower knows the key, not yet the grant.
		if got := e.kmsDecrypt(followers[i%2], acme, ct.Ciphertext, kmsCtx{Field: "f"}); got != "x" {
			t.Fatalf("decrypt with a key granted a moment ago = %q", got)
		}
		if ct := e.kmsEncrypt(followers[1-i%2], acme, name, "y", kmsCtx{Field: "f"}); ct.KeyVersion != 1 {
			t.Fatalf("encrypt with a key granted a moment ago: %+v", ct)
		}
	}
	// A key that does not exist is still not found on a follower, after the
	// catch-up.
	if r := e.call(followers[0], "POST", "/v1/kms/encrypt", op,
		map[string]any{"key": "no-such-key", "plaintext": b64std("x"), "context": kmsCtx{Field: "f"}}); r.status != 404 {
		t.Fatalf("unknown key on a follower: %s, want 404", r)
	}
}
