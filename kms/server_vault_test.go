package kms_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/allsource/guard/internal/server"
	"github.com/allsource/guard/kms"
)

// The vault backend wired through a real server (-kms-backend vault) against
// the transit STAND-IN (no Vault can be installed here; see
// vault_standin_test.go): keys created through the API are transit keys,
// rotation and min_decryption_version reach Vault, a wrong token answers 503
// without stopping the server.

type devServer struct {
	t   *testing.T
	srv *server.Server
	hc  *http.Client
}

func startDevServer(t *testing.T, k server.KMSSettings) *devServer {
	t.Helper()
	dir := t.TempDir()
	cfg := server.Config{Dev: true, NodeID: "dev", DataDir: dir, HTTPAddr: "127.0.0.1:0", RaftAddr: "127.0.0.1:0",
		LogLevel: "warn", LogFormat: "text", MaxBodyBytes: 1 << 20, QuietToken: true, Version: "kms-test",
		KMSLocalKeyFile: filepath.Join(dir, "root.key"), KMS: k}
	cfg.Threat.Disabled = true
	if _, err := kms.InitLocalRootKey(cfg.KMSLocalKeyFile); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := server.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	d := &devServer{t: t, srv: srv, hc: &http.Client{Timeout: 30 * time.Second}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var h struct {
			Role string `json:"role"`
		}
		if d.call("GET", "/health", nil, &h) == 200 && h.Role == "leader" {
			var keys json.RawMessage
			if d.call("GET", "/v1/kms/keys", nil, &keys) == 200 && d.call("GET", "/v1/tenants/dev-tenant", nil, nil) == 200 {
				return d
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the dev server did not become ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *devServer) call(method, path string, body, out any) int {
	d.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+d.srv.HTTPAddr()+path, rd)
	resp, err := d.hc.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			d.t.Fatalf("%s %s: %s: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

func (d *devServer) must(want int, method, path string, body, out any) {
	d.t.Helper()
	if got := d.call(method, path, body, out); got != want {
		d.t.Fatalf("%s %s: %d, want %d", method, path, got, want)
	}
}

type fieldOut struct {
	Ciphertext string `json:"ciphertext"`
	Plaintext  string `json:"plaintext"`
	KeyVersion int    `json:"key_version"`
}

type keyOut struct {
	Backend              string `json:"backend"`
	LatestVersion        int    `json:"latest_version"`
	MinDecryptionVersion int    `json:"min_decryption_version"`
}

func TestVaultBackendThroughServer(t *testing.T) {
	v := kms.NewStandInVault()
	t.Cleanup(v.Close)
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(v.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDevServer(t, server.KMSSettings{Backend: "vault", VaultAddress: v.URL, VaultTokenFile: tokenFile, CheckEvery: 100 * time.Millisecond})
	var k keyOut
	d.must(201, "POST", "/v1/kms/keys", map[string]any{"name": "pii"}, &k)
	if k.Backend != "vault" || v.Latest("dev-tenant.pii") != 1 {
		t.Fatalf("key %+v, transit versions %d", k, v.Latest("dev-tenant.pii"))
	}
	ctx := map[string]string{"field": "email"}
	pt := base64.StdEncoding.EncodeToString([]byte("ann@acme.test"))
	var c1, c2, rw, dec fieldOut
	d.must(200, "POST", "/v1/kms/encrypt", map[string]any{"key": "pii", "plaintext": pt, "context": ctx}, &c1)
	d.must(200, "POST", "/v1/kms/keys/pii/rotate", nil, &k)
	if k.LatestVersion != 2 || v.Latest("dev-tenant.pii") != 2 {
		t.Fatalf("after rotate: %+v, transit versions %d", k, v.Latest("dev-tenant.pii"))
	}
	d.must(200, "POST", "/v1/kms/encrypt", map[string]any{"key": "pii", "plaintext": pt, "context": ctx}, &c2)
	d.must(200, "POST", "/v1/kms/decrypt", map[string]any{"ciphertext": c1.Ciphertext, "context": ctx}, &dec)
	if dec.Plaintext != pt || c1.KeyVersion != 1 || c2.KeyVersion != 2 {
		t.Fatalf("decrypt of version 1 = %+v (versions %d, %d)", dec, c1.KeyVersion, c2.KeyVersion)
	}
	d.must(200, "POST", "/v1/kms/rewrap", map[string]any{"ciphertext": c1.Ciphertext, "context": ctx}, &rw)
	if rw.KeyVersion != 2 || rw.Plaintext != "" {
		t.Fatalf("rewrap = %+v", rw)
	}
	d.must(200, "PATCH", "/v1/kms/keys/pii", map[string]any{"min_decryption_version": 2}, &k)
	if v.MinDecryption("dev-tenant.pii") != 2 {
		t.Fatalf("min_decryption_version did not reach Vault: %d", v.MinDecryption("dev-tenant.pii"))
	}
	if got := d.call("POST", "/v1/kms/decrypt", map[string]any{"ciphertext": c1.Ciphertext, "context": ctx}, nil); got != 400 {
		t.Fatalf("retired version: %d, want 400", got)
	}
	d.must(200, "POST", "/v1/kms/decrypt", map[string]any{"ciphertext": rw.Ciphertext, "context": ctx}, &dec)
	if dec.Plaintext != pt {
		t.Fatal("rewrapped ciphertext does not decrypt")
	}
	var dk fieldOut
	d.must(200, "POST", "/v1/kms/datakey", map[string]any{"key": "pii", "context": ctx}, &dk)
	if raw, _ := base64.StdEncoding.DecodeString(dk.Plaintext); len(raw) != 32 {
		t.Fatalf("datakey = %+v", dk)
	}
}

func TestVaultBackendWrongTokenThroughServer(t *testing.T) {
	v := kms.NewStandInVault()
	t.Cleanup(v.Close)
	d := startDevServer(t, server.KMSSettings{Backend: "vault", VaultAddress: v.URL, VaultToken: "hvs.wrong", CheckEvery: 100 * time.Millisecond})
	var h struct {
		KMS []struct {
			Backend string `json:"backend"`
			OK      bool   `json:"ok"`
			Error   string `json:"error"`
		} `json:"kms"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		d.must(200, "GET", "/health", nil, &h)
		if len(h.KMS) == 2 && h.KMS[1].Backend == "vault" && !h.KMS[1].OK && h.KMS[1].Error != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health kms = %+v, want vault reported down", h.KMS)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := d.call("POST", "/v1/kms/keys", map[string]any{"name": "pii"}, nil); got != 503 {
		t.Fatalf("creating a vault key with a wrong token: %d, want 503", got)
	}
	// The local backend and the rest of the server keep working.
	var out fieldOut
	d.must(201, "POST", "/v1/kms/keys", map[string]any{"name": "loc", "backend": "local"}, nil)
	d.must(200, "POST", "/v1/kms/encrypt", map[string]any{"key": "loc", "plaintext": "eA==", "context": map[string]string{"field": "f"}}, &out)
}
