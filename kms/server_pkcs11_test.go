//go:build pkcs11

package kms_test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/allsource/guard/internal/server"
	"github.com/allsource/guard/kms"
)

// The pkcs11 backend wired through a real server (-kms-backend pkcs11, a
// binary built with -tags pkcs11) against SoftHSM2.
func TestPKCS11BackendThroughServer(t *testing.T) {
	lib, token, pin := kms.SoftHSMForTest(t)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDevServer(t, server.KMSSettings{Backend: "pkcs11", PKCS11Library: lib, PKCS11TokenLabel: token, PKCS11PINFile: pinFile,
		CheckEvery: 100 * time.Millisecond})
	// The token outlives this test within the package run: a fresh name.
	name := "srv-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var k keyOut
	d.must(201, "POST", "/v1/kms/keys", map[string]any{"name": name}, &k)
	if k.Backend != "pkcs11" {
		t.Fatalf("key = %+v", k)
	}
	ctx := map[string]string{"field": "card"}
	pt := base64.StdEncoding.EncodeToString([]byte("4111 1111 1111 1111"))
	var c1, rw, dec fieldOut
	d.must(200, "POST", "/v1/kms/encrypt", map[string]any{"key": name, "plaintext": pt, "context": ctx}, &c1)
	d.must(200, "POST", "/v1/kms/keys/"+name+"/rotate", nil, &k)
	d.must(200, "POST", "/v1/kms/decrypt", map[string]any{"ciphertext": c1.Ciphertext, "context": ctx}, &dec)
	if dec.Plaintext != pt || k.LatestVersion != 2 {
		t.Fatalf("decrypt after rotation = %+v, key %+v", dec, k)
	}
	d.must(200, "POST", "/v1/kms/rewrap", map[string]any{"ciphertext": c1.Ciphertext, "context": ctx}, &rw)
	d.must(200, "PATCH", "/v1/kms/keys/"+name, map[string]any{"min_decryption_version": 2}, &k)
	if got := d.call("POST", "/v1/kms/decrypt", map[string]any{"ciphertext": c1.Ciphertext, "context": ctx}, nil); got != 400 {
		t.Fatalf("retired version: %d, want 400", got)
	}
	d.must(200, "POST", "/v1/kms/decrypt", map[string]any{"ciphertext": rw.Ciphertext, "context": ctx}, &dec)
	if dec.Plaintext != pt || rw.KeyVersion != 2 {
		t.Fatalf("rewrapped = %+v", rw)
	}
}
