package test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/allsource/guard/auth"
)

// cliServer starts one bootstrapped `allsource server` and returns the
// binary, the operator's environment, a runner of commands that must
// succeed (as the operator) and the test's directory.
func cliServer(t *testing.T, id string) (bin string, env []string, must func(stdin string, args ...string) string, dir string) {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	bin = allsourceBinary(t)
	dir = t.TempDir()
	ports := reservePorts(t, 2)
	_, env = operatorServer(t, dir, id, loopback(ports[0]), []string{"server", "-node-id", id,
		"-http-addr", loopback(ports[0]), "-raft-addr", loopback(ports[1]), "-join-token", testJoinToken,
		"-bootstrap", "-data-dir", filepath.Join(dir, id)})
	// No command may read or write the real user's saved token.
	env = append(env, "HOME="+filepath.Join(dir, "home"), "XDG_CONFIG_HOME="+filepath.Join(dir, "home", ".config"))
	return bin, env, cliMust(t, bin, env), dir
}

// withToken is env with ALLSOURCE_TOKEN replaced (tok "": none).
func withToken(env []string, tok string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "ALLSOURCE_TOKEN=") {
			out = append(out, kv)
		}
	}
	if tok != "" {
		out = append(out, "ALLSOURCE_TOKEN="+tok)
	}
	return out
}

// mustFail runs a command that must fail: non-zero exit, and stderr holding
// every one of want.
func mustFail(t *testing.T, bin, stdin string, env []string, want []string, args ...string) string {
	t.Helper()
	out, stderr, err := runBin(bin, stdin, env, args...)
	if err == nil {
		t.Fatalf("allsource %s succeeded (stdout %q); want a failure", strings.Join(args, " "), out)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Fatalf("allsource %s: stderr %q; want it to say %q", strings.Join(args, " "), stderr, w)
		}
	}
	return stderr
}

func jsonInto(t *testing.T, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("not JSON: %v:\n%s", err, out)
	}
}

const cliPassword = "correct-horse-battery-42"

// TestUserKeyLoginCLI drives `allsource user …`, `allsource login` and
// `allsource key …` against a server process: users are created (password
// on standard input), listed, changed and deleted; a user logs in, saves
// the token and uses it; an API key is created, used, listed and revoked.
// Every group's bad input fails with a clear message and changes nothing.
func TestUserKeyLoginCLI(t *testing.T) {
	bin, env, cli, dir := cliServer(t, "u1")
	cli("", "tenant", "create", "acme")

	// ---- user ----
	var alice struct{ ID, Username, Role string }
	jsonInto(t, cli(cliPassword+"\n", "user", "create", "-tenant", "acme", "alice", "-role", "admin", "-email", "alice@example.com"), &alice)
	if alice.ID == "" || alice.Username != "alice" || alice.Role != "admin" {
		t.Fatalf("user create answered %+v", alice)
	}
	var bob struct{ ID string }
	jsonInto(t, cli("", "user", "create", "-tenant", "acme", "bob", "-password", cliPassword), &bob)
	mustFail(t, bin, cliPassword+"\n", env, []string{"allsource user:", "role"}, "user", "create", "-tenant", "acme", "mallory", "-role", "superuser")
	mustFail(t, bin, cliPassword+"\n", env, []string{"-tenant is required"}, "user", "create", "mallory")
	mustFail(t, bin, cliPassword+"\n", env, []string{"conflict"}, "user", "create", "-tenant", "acme", "alice")
	list := cli("", "user", "list", "-tenant", "acme")
	if !strings.Contains(list, "alice@example.com") || !strings.Contains(list, "bob") || strings.Contains(list, "mallory") {
		t.Fatalf("user list after the refused creations:\n%s", list)
	}
	cli("", "user", "update", "-tenant", "acme", "bob", "-role", "developer", "-disabled", "true")
	var got struct {
		Role     string
		Disabled bool
	}
	jsonInto(t, cli("", "user", "get", "-tenant", "acme", bob.ID), &got)
	if got.Role != "developer" || !got.Disabled {
		t.Fatalf("bob after update: %+v, want developer and disabled", got)
	}
	mustFail(t, bin, "", env, []string{"not_found"}, "user", "update", "-tenant", "acme", "nobody", "-role", "admin")
	mustFail(t, bin, "", env, []string{"usage: allsource user get"}, "user", "get", "-tenant", "acme")

	// ---- login ----
	out, stderr, err := runBin(bin, "wrong-password-123456\n", withToken(env, ""), "login", "-tenant", "acme", "-username", "alice")
	if err == nil || out != "" || !strings.Contains(stderr, "unauthenticated") {
		t.Fatalf("login with a wrong password: err %v, stdout %q, stderr %q; want a refusal and no token", err, out, stderr)
	}
	mustFail(t, bin, "", withToken(env, ""), []string{"usage: allsource login"}, "login", "-tenant", "acme")
	// A disabled user cannot log in.
	mustFail(t, bin, cliPassword+"\n", withToken(env, ""), []string{"allsource login:"}, "login", "acme", "bob")
	out, stderr, err = runBin(bin, cliPassword+"\n", withToken(env, ""), "login", "-tenant", "acme", "-username", "alice")
	if err != nil {
		t.Fatalf("login: %v: %s", err, stderr)
	}
	jwt := strings.TrimSpace(out)
	if strings.Count(jwt, ".") != 2 || !strings.Contains(stderr, "expires in") {
		t.Fatalf("login printed %q (stderr %q); want one access token", out, stderr)
	}
	// The token works: alice, an admin of acme, lists acme's users.
	if _, stderr, err := runBin(bin, "", withToken(env, jwt), "user", "list", "-tenant", "acme"); err != nil {
		t.Fatalf("user list with the login's token: %v: %s", err, stderr)
	}
	// -save keeps it in the user's config directory, readable by the user
	// only, and later commands use it without ALLSOURCE_TOKEN.
	if _, stderr, err := runBin(bin, cliPassword+"\n", withToken(env, ""), "login", "acme", "alice", "-save"); err != nil {
		t.Fatalf("login -save: %v: %s", err, stderr)
	}
	saved := filepath.Join(dir, "home", ".config", "allsource", "token")
	if st, err := os.Stat(saved); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("saved token %s: %v, want mode 0600", saved, err)
	}
	if out, stderr, err := runBin(bin, "", withToken(env, ""), "user", "get", "-tenant", "acme", "alice"); err != nil || !strings.Contains(out, alice.ID) {
		t.Fatalf("user get with the saved token: %v: %s%s", err, out, stderr)
	}

	// ---- key (as alice, with her token) ----
	asAlice := withToken(env, jwt)
	mustFail(t, bin, "", asAlice, []string{"invalid_argument", "expires_in"}, "key", "create", "-tenant", "acme", "ci", "-expires-in", "forever")
	mustFail(t, bin, "", asAlice, []string{"usage: allsource key create"}, "key", "create", "-tenant", "acme")
	if out := cli("", "key", "list", "-tenant", "acme"); strings.Contains(out, "ci") {
		t.Fatalf("key list after refused creations:\n%s", out)
	}
	out, stderr, err = runBin(bin, "", asAlice, "key", "create", "-tenant", "acme", "ci", "-role", "readonly", "-expires-in", "720h")
	if err != nil {
		t.Fatalf("key create: %v: %s", err, stderr)
	}
	key := strings.TrimSpace(out)
	if !strings.HasPrefix(key, auth.APIKeyPrefix) || !strings.Contains(stderr, "shown once") {
		t.Fatalf("key create printed %q (stderr %q)", out, stderr)
	}
	var keys struct {
		Keys []struct {
			ID, Name, Role string
			ExpiresAt      time.Time `json:"expires_at"`
			RevokedAt      time.Time `json:"revoked_at"`
		} `json:"api_keys"`
	}
	jsonInto(t, cli("", "key", "list", "-tenant", "acme", "-json"), &keys)
	if len(keys.Keys) != 1 || keys.Keys[0].Name != "ci" || keys.Keys[0].Role != "readonly" || keys.Keys[0].ExpiresAt.IsZero() || !keys.Keys[0].RevokedAt.IsZero() {
		t.Fatalf("key list: %+v", keys.Keys)
	}
	keyID := keys.Keys[0].ID
	if strings.Contains(cli("", "key", "list", "-tenant", "acme"), key) {
		t.Fatal("key list shows the raw key")
	}
	// The key is a credential: a readonly key reads its tenant and may not
	// create a user.
	if out, stderr, err := runBin(bin, "", withToken(env, key), "tenant", "get", "acme"); err != nil || !strings.Contains(out, "acme") {
		t.Fatalf("tenant get with the API key: %v: %s%s", err, out, stderr)
	}
	mustFail(t, bin, cliPassword+"\n", withToken(env, key), []string{"forbidden"}, "user", "create", "-tenant", "acme", "eve")
	mustFail(t, bin, "", env, []string{"not_found"}, "key", "revoke", "-tenant", "acme", "no-such-key")
	cli("", "key", "revoke", "-tenant", "acme", keyID)
	jsonInto(t, cli("", "key", "list", "-tenant", "acme", "-json"), &keys)
	if len(keys.Keys) != 1 || keys.Keys[0].RevokedAt.IsZero() {
		t.Fatalf("key list after revoke: %+v", keys.Keys)
	}
	waitFor(t, 30*time.Second, "the revoked key to be refused", func() bool {
		_, stderr, err := runBin(bin, "", withToken(env, key), "tenant", "get", "acme")
		return err != nil && strings.Contains(stderr, "unauthenticated")
	})

	// ---- passwd and delete ----
	cli("new-"+cliPassword+"\n", "user", "passwd", "-tenant", "acme", "alice")
	mustFail(t, bin, cliPassword+"\n", withToken(env, ""), []string{"unauthenticated"}, "login", "acme", "alice")
	if _, stderr, err := runBin(bin, "new-"+cliPassword+"\n", withToken(env, ""), "login", "acme", "alice"); err != nil {
		t.Fatalf("login with the new password: %v: %s", err, stderr)
	}
	mustFail(t, bin, "", env, []string{"not_found"}, "user", "delete", "-tenant", "acme", "nobody")
	cli("", "user", "delete", "-tenant", "acme", bob.ID)
	if list := cli("", "user", "list", "-tenant", "acme"); strings.Contains(list, "bob") || !strings.Contains(list, "alice") {
		t.Fatalf("user list after deleting bob:\n%s", list)
	}
}
