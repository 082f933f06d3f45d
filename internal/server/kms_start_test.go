package server

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/allsource/guard/api"
	"github.com/allsource/guard/kms"
)

// closeSpy is a working backend that counts its Close calls.
type closeSpy struct {
	kms.Provider
	closed atomic.Int32
}

func (c *closeSpy) Close() error { c.closed.Add(1); return c.Provider.Close() }

var (
	spyOnce   sync.Once
	spyOpened = make(chan *closeSpy, 8)
)

// registerSpyBackend registers, once per test binary, a backend named
// "close-spy" that hands each provider it opens to spyOpened.
func registerSpyBackend(t *testing.T) {
	t.Helper()
	spyOnce.Do(func() {
		kms.RegisterProvider("close-spy", func(context.Context, map[string]string) (kms.Provider, error) {
			lp, err := kms.NewLocalProvider(make([]byte, kms.RootKeySize))
			if err != nil {
				return nil, err
			}
			c := &closeSpy{Provider: lp}
			spyOpened <- c
			return c, nil
		})
	})
}

// A KMS start that fails after the remote backend was opened (here the
// keyring refuses its providers: no local one) closes that backend; nothing
// else would, since the keyring that closes it on shutdown was never made.
func TestKMSStartFailureClosesTheRemoteBackend(t *testing.T) {
	registerSpyBackend(t)
	p := &Server{cfg: Config{KMS: KMSSettings{Backend: "close-spy"}}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), api: &api.Server{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := p.startKMS(ctx, nil); err == nil {
		t.Fatal("startKMS with a nil local provider succeeded")
	}
	var spy *closeSpy
	select {
	case spy = <-spyOpened:
	default:
		t.Fatal("the remote backend was never opened; the test does not reach the keyring")
	}
	cancel()
	p.stopKMS() // what Start's failure path runs next
	if n := spy.closed.Load(); n != 1 {
		t.Fatalf("remote backend closed %d times after the failed start, want 1", n)
	}
	if p.kms.keyring != nil || p.kmsStore.Load() != nil {
		t.Fatal("a failed KMS start left a keyring or key store behind")
	}
}
