package test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKMSCLI drives `allsource kms …` against an `allsource server` process:
// init-local writes a 0600 root key and refuses to overwrite it, the server
// refuses a root key file others can read, and the key and field commands
// work end to end (stdin input, rotation, rewrap, retirement, grants).
func TestKMSCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test: skipped with -short")
	}
	bin := allsourceBinary(t)
	dir := t.TempDir()
	run := func(stdin string, env []string, args ...string) (string, string, error) {
		return runBin(bin, stdin, env, args...)
	}

	root := filepath.Join(dir, "root.key")
	if _, stderr, err := run("", nil, "kms", "init-local", "-out", root); err != nil {
		t.Fatalf("init-local: %v: %s", err, stderr)
	}
	st, err := os.Stat(root)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("root key file: %v, mode %v, want 0600", err, st.Mode())
	}
	before, _ := os.ReadFile(root)
	if _, stderr, err := run("", nil, "kms", "init-local", "-out", root); err == nil || !strings.Contains(stderr, "refusing to overwrite") {
		t.Fatalf("second init-local: err %v, stderr %q; want a refusal", err, stderr)
	}
	if after, _ := os.ReadFile(root); !bytes.Equal(before, after) {
		t.Fatal("init-local changed an existing root key file")
	}

	// A world-readable root key stops the server with a clear message.
	loose := filepath.Join(dir, "loose.key")
	if err := os.WriteFile(loose, before, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o644); err != nil {
		t.Fatal(err)
	}
	ports := reservePorts(t, 4)
	base := []string{"server", "-node-id", "k1", "-http-addr", loopback(ports[0]), "-raft-addr", loopback(ports[1]),
		"-join-token", testJoinToken, "-bootstrap"}
	_, stderr, err := run("", nil, append(base, "-data-dir", filepath.Join(dir, "loose"), "-kms-root-key-file", loose)...)
	if err == nil || !strings.Contains(stderr, "chmod 600") {
		t.Fatalf("server with a 0644 root key: err %v, stderr tail %q; want a refusal naming chmod 600", err, tailLines(stderr, 3))
	}
	// So does -kms-backend pkcs11 in this (untagged) binary.
	_, stderr, err = run("", nil, append(base, "-data-dir", filepath.Join(dir, "p11"), "-kms-backend", "pkcs11")...)
	if err == nil || !strings.Contains(stderr, "-tags pkcs11") {
		t.Fatalf("server with -kms-backend pkcs11: err %v, stderr tail %q", err, tailLines(stderr, 3))
	}

	_, env := operatorServer(t, dir, "k1", loopback(ports[0]),
		append(base, "-data-dir", filepath.Join(dir, "k1"), "-kms-root-key-file", root))
	cli := cliMust(t, bin, env)
	cli("", "tenant", "create", "acme")
	cli("", "tenant", "create", "globex")
	var k struct {
		Name, Tenant, Backend string
		LatestVersion         int `json:"latest_version"`
	}
	if err := json.Unmarshal([]byte(cli("", "kms", "key", "create", "pii", "-tenant", "acme", "-rotation-period", "720h")), &k); err != nil ||
		k.Name != "acme/pii" || k.Tenant != "acme" || k.Backend != "local" || k.LatestVersion != 1 {
		t.Fatalf("key create: %+v %v", k, err)
	}
	if out := cli("", "kms", "key", "list"); !strings.Contains(out, "pii") || !strings.Contains(out, "acme") || !strings.Contains(out, "720h") {
		t.Fatalf("key list:\n%s", out)
	}

	email := "ann@acme.test"
	ct1 := strings.TrimSpace(cli(email, "kms", "encrypt", "-key", "pii", "-tenant", "acme", "-field", "email"))
	if !strings.HasPrefix(ct1, "asg:v1:") || strings.Contains(ct1, email) {
		t.Fatalf("encrypt printed %q", ct1)
	}
	if got := cli("", "kms", "decrypt", "-tenant", "acme", "-field", "email", ct1); got != email {
		t.Fatalf("decrypt printed %q, want %q", got, email)
	}
	if _, stderr, err := run("", env, "kms", "decrypt", "-tenant", "globex", "-field", "email", ct1); err == nil || !strings.Contains(stderr, "decryption failed") {
		t.Fatalf("decrypt in globex's context (the ciphertext is bound to acme): err %v %q", err, stderr)
	}
	// The operator names acme's key with -tenant (or as acme/pii); a bare
	// "pii" would be a global key, and there is none.
	if _, stderr, err := run("", env, "kms", "key", "rotate", "pii"); err == nil || !strings.Contains(stderr, "not found") {
		t.Fatalf("rotating a global pii that does not exist: err %v %q", err, stderr)
	}
	cli("", "kms", "key", "rotate", "pii", "-tenant", "acme")
	if out := cli("", "kms", "key", "get", "acme/pii"); !strings.Contains(out, `"latest_version": 2`) && !strings.Contains(out, `"latest_version":2`) {
		t.Fatalf("key get acme/pii after rotate: %s", out)
	}
	ct2 := strings.TrimSpace(cli(ct1+"\n", "kms", "rewrap", "-tenant", "acme", "-field", "email", "-"))
	if ct2 == ct1 || !strings.HasPrefix(ct2, "asg:v1:") {
		t.Fatalf("rewrap printed %q", ct2)
	}
	cli("", "kms", "key", "set", "pii", "-tenant", "acme", "-min-decryption-version", "2")
	if _, stderr, err := run("", env, "kms", "decrypt", "-tenant", "acme", "-field", "email", ct1); err == nil || !strings.Contains(stderr, "retired") {
		t.Fatalf("decrypt of a retired version: err %v %q", err, stderr)
	}
	if got := cli("", "kms", "decrypt", "-tenant", "acme", "-field", "email", ct2); got != email {
		t.Fatalf("decrypt of the rewrapped ciphertext printed %q", got)
	}
	if out := cli("", "kms", "datakey", "-key", "pii", "-tenant", "acme", "-field", "backup"); !strings.Contains(out, "plaintext_key: ") || !strings.Contains(out, "ciphertext:    asg:v1:") {
		t.Fatalf("datakey printed %q", out)
	}
	cli("", "kms", "key", "create", "shared")
	if out := cli("", "kms", "key", "grant", "shared", "-tenant", "globex"); !strings.Contains(out, "globex") {
		t.Fatalf("grant printed %q", out)
	}
	if out := cli("", "kms", "key", "get", "shared"); !strings.Contains(out, `"globex"`) {
		t.Fatalf("key get after grant: %s", out)
	}
	cli("", "kms", "key", "grant", "shared", "-tenant", "globex", "-revoke")
	if out := cli("", "kms", "key", "get", "shared"); strings.Contains(out, `"globex"`) {
		t.Fatalf("key get after revoke: %s", out)
	}
}
