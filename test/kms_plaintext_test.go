package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/auth"
	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/kms"
)

// TestNoPlaintextAtRest (issue 5): a 3-server cluster stores users with
// e-mail addresses, MFA secrets (active and pending), several signing keys
// (rotated through the API), API keys and the pepper, and uses the KMS
// service (a tenant key, rotated; encrypt, decrypt, rewrap and datakey, whose
// plaintexts and data keys must be answered and audited, never stored);
// every server takes a
// raft snapshot, more of the same is written after it (so the raft log, the
// snapshots and the state database all hold some), the servers are closed,
// and every file under every data directory is searched for each secret in
// every encoding the product could plausibly have written it in: raw bytes,
// text, standard and URL-safe base64 at each of the three byte alignments
// (JSON encodes []byte as base64), hex, and for signing keys the seed, the
// 64-byte private key, PKCS#8 DER and the serialised form the server wraps.
//
// Positive controls prove the search can fail: usernames and the tenant name
// (stored in the clear) are found in raft.db, state.db and a snapshot of
// every server; each signing key's public part (stored in the clear as a
// []byte, so base64 in JSON) is found by the base64 search; and the searcher
// is checked on a synthetic buffer first.
func TestNoPlaintextAtRest(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: skipped with -short")
	}
	checkSearcher(t)

	e := idCluster(t, 3, func(n *inprocNode) {
		n.cfg.Identity.ArgonMemoryKiB, n.cfg.Identity.ArgonTime, n.cfg.Identity.AllowWeakArgon = 64, 1, true
	})
	ctx := context.Background()
	tag := strings.ToLower(rand.Text()[:10]) // distinct per run: nothing else can contain these
	var secrets []needle                     // must not be found
	var controls []string                    // stored in the clear: must be found

	tenantName := "Plaintext Control Tenant " + tag
	e.mustCreate(0, "POST", "/v1/tenants", e.opCred(), map[string]string{"id": "acme", "name": tenantName}, "/v1/tenants/acme",
		func(b []byte) bool {
			var tv fsm.Tenant
			return json.Unmarshal(b, &tv) == nil && tv.ID == "acme" && tv.Name == tenantName
		})
	controls = append(controls, tenantName)

	type user struct{ id, name, pw, email string }
	var users []user
	addUser := func(i int, role string) user {
		u := user{name: fmt.Sprintf("ctrluser%d-%s", i, tag), pw: fmt.Sprintf("pw-%d-%s-correct-horse-battery", i, tag),
			email: fmt.Sprintf("leak.check.%d.%s@plaintext-probe.example", i, tag)}
		var v api.UserView
		e.must(201, i, "POST", "/v1/tenants/acme/users", e.opCred(),
			map[string]string{"username": u.name, "password": u.pw, "email": u.email, "role": role}, &v)
		u.id = v.ID
		users = append(users, u)
		secrets = append(secrets, textNeedle("email of "+u.name, u.email), textNeedle("password of "+u.name, u.pw))
		controls = append(controls, u.name)
		return u
	}
	loginAs := func(u user) string {
		e.t.Helper()
		var tr api.TokenResponse
		e.must(200, 0, "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": "acme", "username": u.name, "password": u.pw}, &tr)
		return tr.AccessToken
	}
	totps := map[string]string{} // user → active TOTP secret
	// loginAsMFA logs in with the user's second factor (the next step's code:
	// activation consumed the current one).
	loginAsMFA := func(u user) string {
		e.t.Helper()
		code, err := auth.DefaultTOTP.Code(totps[u.name], time.Now().Add(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var tr api.TokenResponse
		e.must(200, 0, "POST", "/v1/auth/login", cred{}, map[string]string{"tenant": "acme", "username": u.name, "password": u.pw, "totp": code}, &tr)
		return tr.AccessToken
	}
	// enrolMFA enrols u's TOTP secret and, if activate, activates it (the
	// secret moves from the pending state to the user; recovery codes are
	// issued and stored hashed).
	enrolMFA := func(u user, activate bool) {
		tok := loginAs(u)
		var enr api.MFAEnrollment
		path := "/v1/tenants/acme/users/" + u.id + "/mfa"
		e.must(200, 1, "POST", path+"/enroll", bearerCred(u.name, tok), nil, &enr)
		raw, err := auth.DecodeTOTPSecret(enr.Secret)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, textNeedle("TOTP secret (base32) of "+u.name, enr.Secret),
			textNeedle("TOTP secret (base32, lower case) of "+u.name, strings.ToLower(enr.Secret)),
			textNeedle("TOTP URI of "+u.name, enr.URI),
			bytesNeedle("TOTP secret (raw) of "+u.name, raw))
		if !activate {
			return
		}
		code, err := auth.DefaultTOTP.Code(enr.Secret, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		totps[u.name] = enr.Secret
		var act api.MFAActivation
		e.must(200, 2, "POST", path+"/activate", bearerCred(u.name, tok), map[string]string{"code": code}, &act)
		for i, rc := range act.RecoveryCodes {
			secrets = append(secrets, textNeedle(fmt.Sprintf("recovery code %d of %s", i, u.name), rc))
		}
	}
	addAPIKey := func(u user, name string) {
		k := e.createKey("acme", bearerCred(u.name, loginAs(u)), name, "readonly", "")
		secrets = append(secrets, textNeedle("API key "+name, k.Key))
	}
	rotate := func() {
		var v api.SigningKeyView
		e.must(201, 0, "POST", "/v1/signing-keys/rotate", e.opCred(), nil, &v)
	}

	// Before the snapshots.
	admin := addUser(0, "admin")
	addUser(1, "developer")
	addUser(2, "readonly")
	addAPIKey(admin, "before-snapshot") // (logins need a second factor once it is active)
	enrolMFA(users[0], true)
	enrolMFA(users[1], false) // left pending
	rotate()
	rotate()

	// The KMS service: a tenant key, rotated; what passes through encrypt,
	// decrypt, rewrap and datakey is answered, audited without it, and never
	// stored.
	kmsKey := "ctrlkey-" + tag
	adminTok := bearerCred(admin.name, loginAsMFA(admin))
	e.must(201, 0, "POST", "/v1/kms/keys", adminTok, map[string]string{"name": kmsKey}, nil)
	controls = append(controls, kmsKey)
	e.waitConverged() // the KMS operations are answered by any server, from its own state
	kmsValue := "kms-service-plaintext-" + tag + "@plaintext-probe.example"
	secrets = append(secrets, textNeedle("plaintext sent to /v1/kms/encrypt", kmsValue))
	kctx := map[string]string{"field": "email"}
	var enc struct {
		Ciphertext string `json:"ciphertext"`
		Plaintext  string `json:"plaintext"`
	}
	e.must(200, 1, "POST", "/v1/kms/encrypt", adminTok, map[string]any{"key": kmsKey, "plaintext": base64.StdEncoding.EncodeToString([]byte(kmsValue)), "context": kctx}, &enc)
	e.must(200, 0, "POST", "/v1/kms/keys/"+kmsKey+"/rotate", adminTok, nil, nil)
	e.waitConverged()
	var dec struct {
		Plaintext string `json:"plaintext"`
	}
	e.must(200, 2, "POST", "/v1/kms/decrypt", adminTok, map[string]any{"ciphertext": enc.Ciphertext, "context": kctx}, &dec)
	if got, _ := base64.StdEncoding.DecodeString(dec.Plaintext); string(got) != kmsValue {
		t.Fatalf("/v1/kms/decrypt answered %q", got)
	}
	e.must(200, 0, "POST", "/v1/kms/rewrap", adminTok, map[string]any{"ciphertext": enc.Ciphertext, "context": kctx}, nil)
	var dk struct {
		Plaintext string `json:"plaintext"`
	}
	e.must(200, 1, "POST", "/v1/kms/datakey", adminTok, map[string]any{"key": kmsKey, "context": map[string]string{"field": "backups"}}, &dk)
	rawDK, err := base64.StdEncoding.DecodeString(dk.Plaintext)
	if err != nil || len(rawDK) != 32 {
		t.Fatalf("/v1/kms/datakey plaintext: %d bytes, %v", len(rawDK), err)
	}
	secrets = append(secrets, bytesNeedle("data key from /v1/kms/datakey", rawDK))

	e.waitConverged()
	for _, nd := range e.nodes {
		rc, idx, err := nd.srv.Node().SnapshotReader()
		if err != nil {
			t.Fatalf("snapshot on %s: %v", nd.id(), err)
		}
		_, _ = io.Copy(io.Discard, rc)
		rc.Close()
		t.Logf("%s: snapshot at index %d", nd.id(), idx)
	}

	// After them: in the raft log (and state.db) only.
	addUser(3, "admin")
	addAPIKey(users[3], "after-snapshot")
	enrolMFA(users[3], true)
	rotate()
	e.waitConverged()

	// The key material, as the servers hold it in memory: the pepper, and
	// every signing key, opened from its wrapped form by the server's own
	// unwrap (the KMS key "guard-internal" under the shared root key).
	sec := e.nodes[0].srv.Secrets()
	pepper, ok := sec.APIKeyPepper()
	if !ok || len(pepper) < 32 {
		t.Fatal("server 1 holds no pepper")
	}
	secrets = append(secrets, bytesNeedle("API-key pepper", pepper))
	var keys []*fsm.SigningKey
	var stored []*fsm.User
	_ = e.nodes[0].srv.FSM().View(func(rd *fsm.Reader) error {
		keys = rd.SigningKeys()
		for _, u := range users {
			su, _ := rd.User("acme", u.id)
			stored = append(stored, su)
		}
		return nil
	})
	if len(keys) < 4 {
		t.Fatalf("%d signing keys, want the first and 3 rotations", len(keys))
	}
	var publics [][]byte
	for _, k := range keys {
		raw, err := sec.Open(ctx, k.Wrapped, "", "signing_key/"+k.KID)
		if err != nil {
			t.Fatalf("open signing key %s: %v", k.KID, err)
		}
		sk, err := auth.ParseSigningKey(raw)
		if err != nil || sk.Alg != auth.AlgEdDSA {
			t.Fatalf("signing key %s: %v", k.KID, err)
		}
		priv := sk.Ed25519PrivateKey()
		pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, bytesNeedle("signing key "+k.KID+" seed", priv.Seed()),
			bytesNeedle("signing key "+k.KID+" private key", priv),
			bytesNeedle("signing key "+k.KID+" PKCS#8", pkcs8),
			bytesNeedle("signing key "+k.KID+" as wrapped by the server", raw))
		publics = append(publics, k.PublicKey)
	}
	// The sealed e-mail in the state opens to the address (so the search
	// below looks for the right thing in the right place).
	for i, su := range stored {
		pt, err := sec.Open(ctx, su.Email, "acme", "email")
		if err != nil || string(pt) != users[i].email {
			t.Fatalf("sealed e-mail of %s opens to %q, %v", users[i].name, pt, err)
		}
	}
	root, err := kms.LoadLocalRootKey(e.nodes[0].cfg.KMSLocalKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, bytesNeedle("KMS root key", root))

	for _, nd := range e.nodes {
		e.c.stop(nd) // files closed and flushed
	}

	for _, nd := range e.nodes {
		files := readDataDir(t, nd.cfg.DataDir)
		// Positive controls, per file class.
		for _, class := range []string{"raft.db", "state.db", "snapshot"} {
			var in []string
			for name, b := range files {
				if fileClass(name) == class {
					in = append(in, name)
					for _, c := range controls {
						if !bytes.Contains(b, []byte(c)) && !(class == "snapshot" && c == users[3].name) {
							t.Errorf("positive control: %q (stored in the clear) not found in %s of %s", c, name, nd.id())
						}
					}
				}
			}
			if len(in) == 0 {
				t.Errorf("%s: no %s file in the data dir (%d files)", nd.id(), class, len(files))
			}
		}
		var all []byte
		for _, b := range files {
			all = append(all, b...)
		}
		for i, pub := range publics {
			if !bytesNeedle("public key", pub).foundIn(all) {
				t.Errorf("positive control: signing key %d's public part (stored as base64 in JSON) not found on %s", i, nd.id())
			}
		}
		// The secrets.
		for name, b := range files {
			for _, s := range secrets {
				if form, ok := s.find(b); ok {
					t.Errorf("%s: %s found in %s (%s)", nd.id(), s.what, name, form)
				}
			}
		}
		t.Logf("%s: searched %d files, %d bytes, for %d secrets in every encoding", nd.id(), len(files), len(all), len(secrets))
	}
}

// waitConverged waits until every server has applied what the leader has.
func (e *idEnv) waitConverged() {
	e.t.Helper()
	l := e.leader()
	target := l.srv.Node().LastIndex()
	waitFor(e.t, 30*time.Second, "every server to apply the leader's log", func() bool {
		for _, nd := range e.nodes {
			if nd.srv.Node().AppliedIndex() < target {
				return false
			}
		}
		return true
	})
}

// readDataDir reads every regular file under dir.
func readDataDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fileClass names what a data-dir file is: the raft log, the state database,
// a raft snapshot, or other.
func fileClass(rel string) string {
	switch {
	case filepath.Base(rel) == "raft.db":
		return "raft.db"
	case filepath.Base(rel) == "state.db":
		return "state.db"
	case strings.Contains(rel, "snapshots"+string(filepath.Separator)) && filepath.Base(rel) == "state.bin":
		return "snapshot"
	}
	return "other"
}

// needle is a secret and the byte strings its encodings would contain.
type needle struct {
	what  string
	forms map[string][]byte // encoding → bytes to look for
}

func textNeedle(what, s string) needle {
	n := bytesNeedle(what, []byte(s))
	n.forms["text"] = []byte(s)
	return n
}

// bytesNeedle: raw, hex (both cases), and standard / URL-safe base64 at
// each byte alignment: the characters of base64(prefix ‖ b ‖ suffix) that
// depend on b alone, for a prefix of 0, 1 and 2 bytes.
func bytesNeedle(what string, b []byte) needle {
	n := needle{what: what, forms: map[string][]byte{
		"raw":    b,
		"hex":    []byte(hex.EncodeToString(b)),
		"HEX":    []byte(strings.ToUpper(hex.EncodeToString(b))),
		"base32": []byte(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b)[:len(b)*8/5]),
	}}
	for _, enc := range []struct {
		name string
		e    *base64.Encoding
	}{{"base64", base64.StdEncoding}, {"base64url", base64.URLEncoding}} {
		for shift := 0; shift < 3; shift++ {
			s := enc.e.EncodeToString(append(make([]byte, shift), b...))
			first := 0
			if shift > 0 {
				first = 4
			}
			last := 4 * ((shift + len(b)) / 3)
			if last-first >= 8 {
				n.forms[fmt.Sprintf("%s+%d", enc.name, shift)] = []byte(s[first:last])
			}
		}
	}
	return n
}

func (n needle) find(b []byte) (string, bool) {
	for form, f := range n.forms {
		if len(f) > 0 && bytes.Contains(b, f) {
			return form, true
		}
	}
	return "", false
}

func (n needle) foundIn(b []byte) bool { _, ok := n.find(b); return ok }

// checkSearcher: the needle search finds a secret in each encoding, at any
// offset, inside other bytes, and does not find it where it is not.
func checkSearcher(t *testing.T) {
	secret := []byte("0123456789abcdefghij-secret-\x00\xff\x10")
	n := bytesNeedle("probe", secret)
	for pre := 0; pre < 4; pre++ {
		buf := append(bytes.Repeat([]byte{'x'}, pre), secret...)
		buf = append(buf, "tail"...)
		for _, enc := range []string{
			string(buf),
			base64.StdEncoding.EncodeToString(buf),
			base64.RawURLEncoding.EncodeToString(buf),
			hex.EncodeToString(buf),
			`{"email":"` + base64.StdEncoding.EncodeToString(buf) + `"}`,
		} {
			if !n.foundIn([]byte("<<" + enc + ">>")) {
				t.Fatalf("searcher misses the secret behind %d bytes in %q", pre, enc)
			}
		}
	}
	other := bytes.Clone(secret)
	other[len(other)/2] ^= 1
	if n.foundIn(other) || n.foundIn([]byte(base64.StdEncoding.EncodeToString(other))) {
		t.Fatal("searcher finds a secret that is not there")
	}
}

// mustCreate sends a request that creates a resource and must answer 201.
// Like call, it asks again after a 503 not_leader; but an attempt answered
// not_leader may still have been committed (the leader lost its leadership
// after replicating the entry), so a 409 after such a retry means "already
// created": the resource at getPath must then exist as the request made it
// (matches). A 409 on the first attempt, or any other answer, fails.
func (e *idEnv) mustCreate(node int, method, path string, c cred, body any, getPath string, matches func([]byte) bool) {
	e.t.Helper()
	deadline := time.Now().Add(scaled(15 * time.Second))
	retried := false
	for {
		r := e.callOnce(node, method, path, c, body)
		switch {
		case r.status == http.StatusCreated:
			return
		case r.status == http.StatusServiceUnavailable && bytes.Contains(r.body, []byte(`"not_leader"`)) && time.Now().Before(deadline):
			retried = true
			time.Sleep(50 * time.Millisecond) // client backoff before asking again
			continue
		case r.status == http.StatusConflict && retried:
			g := e.call(node, "GET", getPath, c, nil)
			if g.status != http.StatusOK || !matches(g.body) {
				e.t.Fatalf("%s %s: 409 after a retried attempt, and %s answers %s", method, path, getPath, g)
			}
			return
		}
		e.t.Fatalf("%s %s as %s: got %s, want 201", method, path, c.name, r)
	}
}
