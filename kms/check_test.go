package kms

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

func TestCheckVault(t *testing.T) {
	ctx := context.Background()
	_, p := newTestVault(t, VaultConfig{})
	if err := CheckProvider(ctx, p); err != nil {
		t.Fatalf("reachable vault: %v", err)
	}
	_, bad := newTestVault(t, VaultConfig{Token: "hvs.wrong"})
	if err := CheckProvider(ctx, bad); !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("bad token: %v, want ErrPermissionDenied", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + ln.Addr().String()
	ln.Close()
	gone, err := NewVaultProvider(VaultConfig{Address: addr, Token: standInToken, Timeout: 300 * time.Millisecond, MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckProvider(ctx, gone); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed port: %v, want ErrUnavailable", err)
	}
	local, err := NewLocalProvider(testRootKey(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckProvider(ctx, local); err != nil {
		t.Fatalf("local: %v", err)
	}
}

func TestCheckAWS(t *testing.T) {
	p := newTestAWS(t, nil)
	if err := CheckProvider(context.Background(), p); err != nil {
		t.Fatalf("local-kms: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + ln.Addr().String()
	ln.Close()
	gone := newTestAWS(t, func(c *AWSConfig) { c.Endpoint, c.MaxAttempts, c.Timeout = addr, -1, time.Second })
	if err := CheckProvider(context.Background(), gone); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("closed port: %v, want ErrUnavailable", err)
	}
}
