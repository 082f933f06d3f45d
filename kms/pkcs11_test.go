//go:build pkcs11

package kms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
)

// The pkcs11 backend is tested against SoftHSM2 (apt-get install -y
// softhsm2; scripts/ci-kms-deps.sh does it), on tokens made for the test run
// in a temporary directory (SOFTHSM2_CONF points at a config naming it).
const (
	softHSMLibrary = "/usr/lib/softhsm/libsofthsm2.so"
	softHSMToken   = "asg-test"
	softHSMToken2  = "asg-test-pin" // never logged in: for the wrong-PIN test
	softHSMPIN     = "123456"
)

var softHSM struct {
	once    sync.Once
	err     error
	missing string
}

func requireSoftHSM(t testing.TB) {
	t.Helper()
	softHSM.once.Do(func() {
		util, err := exec.LookPath("softhsm2-util")
		if err != nil {
			softHSM.missing = "softhsm2-util not on PATH"
			return
		}
		if _, err := os.Stat(softHSMLibrary); err != nil {
			softHSM.missing = softHSMLibrary + " not found"
			return
		}
		dir, err := os.MkdirTemp("", "softhsm-test-")
		if err != nil {
			softHSM.err = err
			return
		}
		atExit(func() { os.RemoveAll(dir) })
		tokens := filepath.Join(dir, "tokens")
		conf := filepath.Join(dir, "softhsm2.conf")
		if err := os.Mkdir(tokens, 0o700); err != nil {
			softHSM.err = err
			return
		}
		cfg := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			softHSM.err = err
			return
		}
		// Before the module is first initialised in this process.
		os.Setenv("SOFTHSM2_CONF", conf)
		for _, label := range []string{softHSMToken, softHSMToken2} {
			out, err := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", softHSMPIN, "--so-pin", "12345678").CombinedOutput()
			if err != nil {
				softHSM.err = fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
				return
			}
		}
	})
	if softHSM.missing != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("SoftHSM2 is required under CI (%s); install it with: apt-get install -y softhsm2 (scripts/ci-kms-deps.sh)", softHSM.missing)
		}
		t.Skipf("SoftHSM2 not installed (%s): apt-get install -y softhsm2", softHSM.missing)
	}
	if softHSM.err != nil {
		t.Fatal(softHSM.err)
	}
}

func newTestPKCS11(t testing.TB, mod func(*PKCS11Config)) *PKCS11Provider {
	t.Helper()
	requireSoftHSM(t)
	cfg := PKCS11Config{Library: softHSMLibrary, TokenLabel: softHSMToken, PIN: softHSMPIN}
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewPKCS11Provider(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestConformancePKCS11(t *testing.T) {
	runConformance(t, func(t *testing.T) conformanceBackend {
		return conformanceBackend{Provider: newTestPKCS11(t, nil), EnforcesPolicy: true}
	})
}

func TestPKCS11KeyObjectsOnTheToken(t *testing.T) {
	ctx := context.Background()
	p := newTestPKCS11(t, nil)
	store := &conflictStore{KeyStore: NewMemKeyStore()}
	kr, _ := NewKeyring(KeyringConfig{Store: store, Providers: []Provider{p}})
	name := uniqueKeyName("hsm")
	rec, err := kr.CreateKey(ctx, name, KeyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v1 := rec.Versions[0]
	err = p.with(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := p.handle(sh, rec, v1)
		if err != nil {
			return err
		}
		attrs, err := p.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, nil),
		})
		if err != nil {
			return err
		}
		if string(attrs[0].Value) != "allsource/"+name+"/v1" || attrs[1].Value[0] != 1 || attrs[2].Value[0] != 0 || attrs[3].Value[0] != 1 {
			return fmt.Errorf("attributes label=%q sensitive=%v extractable=%v token=%v", attrs[0].Value, attrs[1].Value, attrs[2].Value, attrs[3].Value)
		}
		if _, err := p.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
			return errors.New("the key value can be read off the token")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A lost record race destroys the version's object.
	store.fail = true
	if _, err := kr.RotateKey(ctx, name); !errors.Is(err, ErrConflict) {
		t.Fatalf("lost race: %v", err)
	}
	err = p.with(ctx, func(sh pkcs11.SessionHandle) error {
		objs, err := p.find(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "allsource/"+name+"/v2")})
		if err != nil {
			return err
		}
		if len(objs) != 0 {
			return fmt.Errorf("%d objects of the discarded version remain", len(objs))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPKCS11AdoptExistingKey(t *testing.T) {
	ctx := context.Background()
	p := newTestPKCS11(t, nil)
	label := uniqueKeyName("legacy-hsm-key")
	err := p.with(ctx, func(sh pkcs11.SessionHandle) error {
		_, err := p.mod.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	kr, _ := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{p}})
	enc := NewEncryptor(kr, EncryptorConfig{})
	name := uniqueKeyName("adopt")
	if _, err := kr.CreateKey(ctx, name, KeyOptions{BackendRef: label}); err != nil {
		t.Fatal(err)
	}
	ct, err := enc.EncryptField(ctx, name, []byte("x"), Context{Tenant: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := enc.DecryptField(ctx, name, ct, Context{Tenant: "t"}); err != nil || string(got) != "x" {
		t.Fatal(err)
	}
	if _, err := kr.CreateKey(ctx, uniqueKeyName("ghost"), KeyOptions{BackendRef: "no-such-label"}); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("missing object adopted: %v", err)
	}
}

func TestPKCS11WrongPINAndToken(t *testing.T) {
	requireSoftHSM(t)
	_, err := NewPKCS11Provider(PKCS11Config{Library: softHSMLibrary, TokenLabel: softHSMToken2, PIN: "000000"})
	if !errors.Is(err, ErrPermissionDenied) {
		t.Fatalf("wrong PIN: %v", err)
	}
	if _, err := NewPKCS11Provider(PKCS11Config{Library: softHSMLibrary, TokenLabel: "no-such-token", PIN: softHSMPIN}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("missing token: %v", err)
	}
	if _, err := NewPKCS11Provider(PKCS11Config{Library: "/nonexistent/libpkcs11.so", TokenLabel: softHSMToken, PIN: softHSMPIN}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("missing library: %v", err)
	}
}

func TestPKCS11RegistryAndSessionLimit(t *testing.T) {
	requireSoftHSM(t)
	ctx := context.Background()
	pinFile := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(pinFile, []byte(softHSMPIN+"\n"), 0o600)
	prov, err := OpenProvider(ctx, "pkcs11", map[string]string{
		"library": softHSMLibrary, "token_label": softHSMToken, "pin_file": pinFile, "max_sessions": "2", "label_prefix": "reg/",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	kr, _ := NewKeyring(KeyringConfig{Store: NewMemKeyStore(), Providers: []Provider{prov}})
	enc := NewEncryptor(kr, EncryptorConfig{Cache: CacheConfig{Disabled: true}})
	name := uniqueKeyName("sessions")
	if _, err := kr.CreateKey(ctx, name, KeyOptions{}); err != nil {
		t.Fatal(err)
	}
	// Eight workers share two sessions.
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				c := Context{Tenant: fmt.Sprint(w)}
				ct, err := enc.EncryptField(ctx, name, []byte("x"), c)
				if err == nil {
					_, err = enc.DecryptField(ctx, name, ct, c)
				}
				if err != nil {
					errc <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	p := prov.(*PKCS11Provider)
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	if open > 2 {
		t.Fatalf("%d sessions open, limit 2", open)
	}
}

// BenchmarkPKCS11SoftHSM runs against SoftHSM2 (a software token loaded into
// the test process through cgo): it measures the PKCS#11 call path and
// SoftHSM's own cryptography and object handling, not a hardware HSM's
// latency.
func BenchmarkPKCS11SoftHSM(b *testing.B) {
	benchBackend(b, newTestPKCS11(b, nil))
}
