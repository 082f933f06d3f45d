package server

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// A start that fails after the identity layer is up (here: a KMS backend
// configuration mistake) stops what it started and releases the data
// directory: a second start on the same directory gets past opening it.
func TestStartFailureReleasesEverything(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dev: true, DataDir: dir, HTTPAddr: "127.0.0.1:0", LogLevel: "info", LogFormat: "text", MaxBodyBytes: 1 << 20,
		KMS: KMSSettings{Backend: "vault", VaultAddress: "http://127.0.0.1:1", VaultTokenFile: filepath.Join(dir, "no-such-token")}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for i := range 2 {
		s, err := Start(context.Background(), cfg, log)
		if err == nil {
			s.Close()
			t.Fatalf("start %d with an unreadable -kms-vault-token-file succeeded", i)
		}
		if !strings.Contains(err.Error(), "-kms-backend vault") {
			t.Fatalf("start %d: %v, want the KMS backend's configuration error", i, err)
		}
	}
}
