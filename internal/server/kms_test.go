//go:build !pkcs11

package server

import (
	"strings"
	"testing"
)

func TestKMSBackendSetting(t *testing.T) {
	for _, ok := range []string{"", "local", "vault", "aws"} {
		if err := (&KMSSettings{Backend: ok}).validate(); err != nil {
			t.Errorf("-kms-backend %q: %v", ok, err)
		}
	}
	err := (&KMSSettings{Backend: "pkcs11"}).validate()
	if err == nil || !strings.Contains(err.Error(), "-tags pkcs11") {
		t.Errorf("-kms-backend pkcs11 in a build without the tag: %v, want an error naming the build tag", err)
	}
	if err := (&KMSSettings{Backend: "gcp"}).validate(); err == nil {
		t.Error("-kms-backend gcp accepted")
	}
	s := (&KMSSettings{Backend: "vault", VaultAddress: "https://v:8200", VaultTokenFile: "/t", VaultTimeout: 3e9, VaultTLSSkipVerify: true}).providerSettings()
	if s["address"] != "https://v:8200" || s["token_file"] != "/t" || s["timeout"] != "3s" || s["tls_skip_verify"] != "true" || len(s) != 4 {
		t.Errorf("vault settings = %v", s)
	}
}
