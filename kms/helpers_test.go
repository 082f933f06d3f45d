package kms

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cleanups run after every test of the package (emulators started once and
// shared by several tests).
var (
	cleanupMu sync.Mutex
	cleanups  []func()
)

func atExit(f func()) {
	cleanupMu.Lock()
	cleanups = append(cleanups, f)
	cleanupMu.Unlock()
}

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupMu.Lock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	cleanupMu.Unlock()
	os.Exit(code)
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// countingProvider counts the calls that reach the wrapped provider.
type countingProvider struct {
	Provider
	generate, decrypt, encrypt, rewrap atomic.Int64
}

func (c *countingProvider) GenerateDataKey(ctx context.Context, rec *KeyRecord, v KeyVersion, b Binding) ([]byte, []byte, error) {
	c.generate.Add(1)
	return c.Provider.GenerateDataKey(ctx, rec, v, b)
}

func (c *countingProvider) Decrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, w []byte, b Binding) ([]byte, error) {
	c.decrypt.Add(1)
	return c.Provider.Decrypt(ctx, rec, v, w, b)
}

func (c *countingProvider) Encrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, pt []byte, b Binding) ([]byte, error) {
	c.encrypt.Add(1)
	return c.Provider.Encrypt(ctx, rec, v, pt, b)
}

func (c *countingProvider) Rewrap(ctx context.Context, rec *KeyRecord, from, to KeyVersion, w []byte, b Binding) ([]byte, error) {
	c.rewrap.Add(1)
	return c.Provider.Rewrap(ctx, rec, from, to, w, b)
}

var keySeq atomic.Int64

// uniqueKeyName gives every test its own key, so tests can share one backend
// (one Vault stand-in, one local-kms process, one SoftHSM token).
func uniqueKeyName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid()%100000, keySeq.Add(1))
}

func testRootKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, RootKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
