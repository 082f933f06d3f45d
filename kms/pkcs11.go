//go:build pkcs11

package kms

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"
)

// This file is built only with -tags pkcs11: the backend needs cgo and a
// PKCS#11 library, and the default allsource binary is a static, cgo-free
// build.

// PKCS11Config configures the "pkcs11" backend.
type PKCS11Config struct {
	// Library is the PKCS#11 module (default /usr/lib/softhsm/libsofthsm2.so).
	Library string
	// TokenLabel selects the token; if empty, Slot is used.
	TokenLabel string
	Slot       uint
	// PIN of the user (CKU_USER).
	PIN string
	// LabelPrefix starts the CKA_LABEL of every key object created
	// (default "allsource/"; the label is <prefix><key name>/v<N>).
	LabelPrefix string
	// MaxSessions bounds the sessions opened on the token (default 8).
	MaxSessions int
}

// PKCS11Provider is the "pkcs11" backend: an HSM through a PKCS#11 module
// (tested with SoftHSM2). Each version of a named key is an AES-256 secret
// key object generated on the token (CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE,
// not extractable), found by its random 16-byte CKA_ID (KeyVersion.Ref, hex).
// Blobs are sealed on the token with CKM_AES_GCM, Binding.AAD() as
// associated data: IV (12) || ciphertext || tag (16). Data keys come from
// the token's C_GenerateRandom. Rewrap unwraps and wraps again in this
// process (PKCS#11 has no re-encrypt). ApplyPolicy clears CKA_DECRYPT on the
// key objects of retired versions (and sets it again when reinstated), so
// the token itself refuses them.
//
// Registry settings ("pkcs11"): library, token_label, slot, pin, pin_file,
// label_prefix, max_sessions.
type PKCS11Provider struct {
	mod    *p11Module
	slot   uint
	pin    string
	prefix string

	mu       sync.Mutex
	idle     []pkcs11.SessionHandle
	open     int
	max      int
	freed    chan struct{} // signalled when a session is returned or dropped
	closed   bool
	loggedIn bool

	handles sync.Map // Ref -> pkcs11.ObjectHandle
}

// p11Module shares one initialised module per library path: C_Initialize
// is process-wide, so two providers on the same library share it.
type p11Module struct {
	ctx  *pkcs11.Ctx
	path string
	refs int
}

var (
	p11ModulesMu sync.Mutex
	p11Modules   = map[string]*p11Module{}
)

func openModule(path string) (*p11Module, error) {
	p11ModulesMu.Lock()
	defer p11ModulesMu.Unlock()
	if m := p11Modules[path]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("%w: cannot load PKCS#11 module %s", ErrInvalidArgument, path)
	}
	if err := ctx.Initialize(); err != nil && !isP11(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		ctx.Destroy()
		return nil, fmt.Errorf("%w: initialising PKCS#11 module %s: %v", ErrUnavailable, path, err)
	}
	m := &p11Module{ctx: ctx, path: path, refs: 1}
	p11Modules[path] = m
	return m, nil
}

func (m *p11Module) release() {
	p11ModulesMu.Lock()
	defer p11ModulesMu.Unlock()
	m.refs--
	if m.refs == 0 {
		m.ctx.Finalize()
		m.ctx.Destroy()
		delete(p11Modules, m.path)
	}
}

func init() {
	RegisterProvider("pkcs11", func(ctx context.Context, settings map[string]string) (Provider, error) {
		s := newSettings("pkcs11", settings)
		cfg := PKCS11Config{
			Library: s.str("library"), TokenLabel: s.str("token_label"), PIN: s.str("pin"),
			LabelPrefix: s.str("label_prefix"), MaxSessions: s.integer("max_sessions"),
		}
		cfg.Slot = uint(s.integer("slot"))
		pinFile := s.str("pin_file")
		if err := s.done(); err != nil {
			return nil, err
		}
		if pinFile != "" {
			b, err := os.ReadFile(pinFile)
			if err != nil {
				return nil, fmt.Errorf("pkcs11 pin_file: %w", err)
			}
			cfg.PIN = strings.TrimSpace(string(b))
		}
		return NewPKCS11Provider(cfg)
	})
}

// NewPKCS11Provider loads the module, finds the token and logs in.
func NewPKCS11Provider(cfg PKCS11Config) (*PKCS11Provider, error) {
	if cfg.Library == "" {
		cfg.Library = "/usr/lib/softhsm/libsofthsm2.so"
	}
	if cfg.LabelPrefix == "" {
		cfg.LabelPrefix = "allsource/"
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 8
	}
	mod, err := openModule(cfg.Library)
	if err != nil {
		return nil, err
	}
	slot := cfg.Slot
	if cfg.TokenLabel != "" {
		slots, err := mod.ctx.GetSlotList(true)
		if err != nil {
			mod.release()
			return nil, fmt.Errorf("%w: PKCS#11 slot list: %v", ErrUnavailable, err)
		}
		found := false
		for _, s := range slots {
			ti, err := mod.ctx.GetTokenInfo(s)
			if err == nil && ti.Label == cfg.TokenLabel {
				slot, found = s, true
				break
			}
		}
		if !found {
			mod.release()
			return nil, fmt.Errorf("%w: no PKCS#11 token labelled %q", ErrUnavailable, cfg.TokenLabel)
		}
	}
	p := &PKCS11Provider{mod: mod, slot: slot, pin: cfg.PIN, prefix: cfg.LabelPrefix, max: cfg.MaxSessions, freed: make(chan struct{}, 1)}
	// Open one session now, so a wrong PIN or slot fails here.
	sh, err := p.acquire(context.Background())
	if err != nil {
		mod.release()
		return nil, err
	}
	p.releaseSession(sh, nil)
	return p, nil
}

// Name implements Provider.
func (p *PKCS11Provider) Name() string { return "pkcs11" }

func isP11(err error, code uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == code
}

// acquire returns an idle session or opens one (logging in on the first),
// waiting for one to be returned when MaxSessions are in use.
func (p *PKCS11Provider) acquire(ctx context.Context) (pkcs11.SessionHandle, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return 0, fmt.Errorf("%w: pkcs11 provider closed", ErrUnavailable)
		}
		if n := len(p.idle); n > 0 {
			sh := p.idle[n-1]
			p.idle = p.idle[:n-1]
			p.mu.Unlock()
			return sh, nil
		}
		if p.open < p.max {
			p.open++
			p.mu.Unlock()
			sh, err := p.openSession()
			if err != nil {
				p.mu.Lock()
				p.open--
				p.mu.Unlock()
				p.signal()
				return 0, err
			}
			return sh, nil
		}
		p.mu.Unlock()
		select {
		case <-p.freed:
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: waiting for a PKCS#11 session: %v", ErrUnavailable, ctx.Err())
		}
	}
}

func (p *PKCS11Provider) openSession() (pkcs11.SessionHandle, error) {
	sh, err := p.mod.ctx.OpenSession(p.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, p.mapErr("open session", "", err)
	}
	// Login state belongs to the application and token, not the session.
	if err := p.mod.ctx.Login(sh, pkcs11.CKU_USER, p.pin); err != nil && !isP11(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		p.mod.ctx.CloseSession(sh)
		return 0, p.mapErr("login", "", err)
	}
	p.mu.Lock()
	p.loggedIn = true
	p.mu.Unlock()
	return sh, nil
}

// releaseSession returns a session to the pool, or closes it if the
// operation failed in a way that may have broken it.
func (p *PKCS11Provider) releaseSession(sh pkcs11.SessionHandle, opErr error) {
	broken := opErr != nil && errors.Is(opErr, ErrUnavailable)
	p.mu.Lock()
	if broken || p.closed {
		p.open--
		p.mu.Unlock()
		p.mod.ctx.CloseSession(sh)
	} else {
		p.idle = append(p.idle, sh)
		p.mu.Unlock()
	}
	p.signal()
}

func (p *PKCS11Provider) signal() {
	select {
	case p.freed <- struct{}{}:
	default:
	}
}

// with runs f on a pooled session.
func (p *PKCS11Provider) with(ctx context.Context, f func(sh pkcs11.SessionHandle) error) error {
	sh, err := p.acquire(ctx)
	if err != nil {
		return err
	}
	err = f(sh)
	p.releaseSession(sh, err)
	return err
}

func (p *PKCS11Provider) label(name string, version int) string {
	return p.prefix + name + "/v" + strconv.Itoa(version)
}

func (p *PKCS11Provider) find(sh pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := p.mod.ctx.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	objs, _, err := p.mod.ctx.FindObjects(sh, 2)
	if ferr := p.mod.ctx.FindObjectsFinal(sh); err == nil {
		err = ferr
	}
	return objs, err
}

// handle finds the key object of a version by CKA_ID.
func (p *PKCS11Provider) handle(sh pkcs11.SessionHandle, rec *KeyRecord, v KeyVersion) (pkcs11.ObjectHandle, error) {
	if h, ok := p.handles.Load(v.Ref); ok {
		return h.(pkcs11.ObjectHandle), nil
	}
	id, err := hex.DecodeString(v.Ref)
	if err != nil || len(id) == 0 {
		return 0, fmt.Errorf("%w: key %q version %d: bad PKCS#11 reference", ErrKeyNotFound, rec.Name, v.Version)
	}
	objs, err := p.find(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	})
	if err != nil {
		return 0, p.mapErr("find key", rec.Name, err)
	}
	switch len(objs) {
	case 0:
		return 0, fmt.Errorf("%w: key %q version %d: no object with CKA_ID %s on the token", ErrKeyNotFound, rec.Name, v.Version, v.Ref)
	case 1:
		p.handles.Store(v.Ref, objs[0])
		return objs[0], nil
	default:
		return 0, fmt.Errorf("%w: key %q version %d: several objects with CKA_ID %s", ErrInvalidArgument, rec.Name, v.Version, v.Ref)
	}
}

// CreateVersion implements Provider: generates an AES-256 key object on the
// token (or, for version 1 with BackendRef, adopts the AES-256 secret key
// object with that CKA_LABEL, which must have a CKA_ID).
func (p *PKCS11Provider) CreateVersion(ctx context.Context, rec *KeyRecord, version int, opts KeyOptions) (KeyVersion, error) {
	var kv KeyVersion
	err := p.with(ctx, func(sh pkcs11.SessionHandle) error {
		if version == 1 && opts.BackendRef != "" {
			objs, err := p.find(sh, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, opts.BackendRef),
			})
			if err != nil {
				return p.mapErr("find key", rec.Name, err)
			}
			if len(objs) != 1 {
				return fmt.Errorf("%w: %d AES key objects labelled %q on the token, want 1", ErrKeyNotFound, len(objs), opts.BackendRef)
			}
			attrs, err := p.mod.ctx.GetAttributeValue(sh, objs[0], []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_ID, nil), pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil),
			})
			if err != nil {
				return p.mapErr("read key attributes", rec.Name, err)
			}
			if len(attrs[0].Value) == 0 || bytesToUint(attrs[1].Value) != dataKeySize {
				return fmt.Errorf("%w: key object %q must be a 256-bit AES key with a CKA_ID", ErrInvalidArgument, opts.BackendRef)
			}
			kv = KeyVersion{Version: 1, Ref: hex.EncodeToString(attrs[0].Value)}
			return nil
		}
		id := make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return err
		}
		h, err := p.mod.ctx.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, dataKeySize),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, p.label(rec.Name, version)),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		})
		if err != nil {
			return p.mapErr("generate key", rec.Name, err)
		}
		kv = KeyVersion{Version: version, Ref: hex.EncodeToString(id)}
		p.handles.Store(kv.Ref, h)
		return nil
	})
	return kv, err
}

// bytesToUint reads a CK_ULONG attribute (native byte order, 4 or 8 bytes).
func bytesToUint(b []byte) uint64 {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b)
	case 4:
		return uint64(binary.NativeEndian.Uint32(b))
	}
	return 0
}

// DiscardVersion implements Provider: destroys the key object.
func (p *PKCS11Provider) DiscardVersion(ctx context.Context, rec *KeyRecord, v KeyVersion) error {
	return p.with(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := p.handle(sh, rec, v)
		if err != nil {
			return err
		}
		p.handles.Delete(v.Ref)
		if err := p.mod.ctx.DestroyObject(sh, h); err != nil {
			return p.mapErr("destroy key", rec.Name, err)
		}
		return nil
	})
}

func (p *PKCS11Provider) seal(sh pkcs11.SessionHandle, rec *KeyRecord, v KeyVersion, plaintext []byte, b Binding) ([]byte, error) {
	h, err := p.handle(sh, rec, v)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, nonceSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	params := pkcs11.NewGCMParams(iv, b.AAD(), tagSize*8)
	defer params.Free()
	if err := p.mod.ctx.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
		return nil, p.mapErr("encrypt", rec.Name, err)
	}
	ct, err := p.mod.ctx.Encrypt(sh, plaintext)
	if err != nil {
		return nil, p.mapErr("encrypt", rec.Name, err)
	}
	if got := params.IV(); len(got) == nonceSize { // some HSMs choose the IV themselves
		iv = got
	}
	return append(iv, ct...), nil
}

// Encrypt implements Provider.
func (p *PKCS11Provider) Encrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, plaintext []byte, b Binding) ([]byte, error) {
	if len(plaintext) > MaxSecretSize {
		return nil, fmt.Errorf("%w: %d bytes is more than a provider wraps (%d)", ErrInvalidArgument, len(plaintext), MaxSecretSize)
	}
	var out []byte
	err := p.with(ctx, func(sh pkcs11.SessionHandle) (err error) {
		out, err = p.seal(sh, rec, v, plaintext, b)
		return err
	})
	return out, err
}

// Decrypt implements Provider.
func (p *PKCS11Provider) Decrypt(ctx context.Context, rec *KeyRecord, v KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	if len(wrapped) < nonceSize+tagSize {
		return nil, fmt.Errorf("%w: key %q version %d: wrapped blob of %d bytes is too short", ErrDecrypt, rec.Name, v.Version, len(wrapped))
	}
	var out []byte
	err := p.with(ctx, func(sh pkcs11.SessionHandle) error {
		h, err := p.handle(sh, rec, v)
		if err != nil {
			return err
		}
		params := pkcs11.NewGCMParams(wrapped[:nonceSize], b.AAD(), tagSize*8)
		defer params.Free()
		if err := p.mod.ctx.DecryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
			return p.decryptErr(rec, v, err)
		}
		out, err = p.mod.ctx.Decrypt(sh, wrapped[nonceSize:])
		if err != nil {
			return p.decryptErr(rec, v, err)
		}
		return nil
	})
	return out, err
}

func (p *PKCS11Provider) decryptErr(rec *KeyRecord, v KeyVersion, err error) error {
	if isP11(err, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED) {
		return fmt.Errorf("%w: key %q version %d: the token refuses to decrypt with it (CKA_DECRYPT is off)", ErrVersionRetired, rec.Name, v.Version)
	}
	mapped := p.mapErr("decrypt", rec.Name, err)
	if errors.Is(mapped, ErrUnavailable) || errors.Is(mapped, ErrPermissionDenied) || errors.Is(mapped, ErrKeyNotFound) {
		return mapped
	}
	return fmt.Errorf("%w: key %q version %d: %v", ErrDecrypt, rec.Name, v.Version, err)
}

// GenerateDataKey implements Provider: 32 bytes from the token's RNG,
// sealed by the version's key object.
func (p *PKCS11Provider) GenerateDataKey(ctx context.Context, rec *KeyRecord, v KeyVersion, b Binding) ([]byte, []byte, error) {
	var dk, w []byte
	err := p.with(ctx, func(sh pkcs11.SessionHandle) error {
		var err error
		if dk, err = p.mod.ctx.GenerateRandom(sh, dataKeySize); err != nil {
			return p.mapErr("generate random", rec.Name, err)
		}
		if len(dk) != dataKeySize {
			return fmt.Errorf("pkcs11: C_GenerateRandom answered %d bytes", len(dk))
		}
		w, err = p.seal(sh, rec, v, dk, b)
		return err
	})
	if err != nil {
		clear(dk)
		return nil, nil, err
	}
	return dk, w, nil
}

// Rewrap implements Provider (decrypt and encrypt again; the plaintext is
// in this process only for the duration of the call).
func (p *PKCS11Provider) Rewrap(ctx context.Context, rec *KeyRecord, from, to KeyVersion, wrapped []byte, b Binding) ([]byte, error) {
	pt, err := p.Decrypt(ctx, rec, from, wrapped, b)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	return p.Encrypt(ctx, rec, to, pt, b)
}

// ApplyPolicy implements Provider: CKA_DECRYPT off below MinDecryptionVersion, on from it.
func (p *PKCS11Provider) ApplyPolicy(ctx context.Context, rec *KeyRecord) error {
	return p.with(ctx, func(sh pkcs11.SessionHandle) error {
		for _, v := range rec.Versions {
			h, err := p.handle(sh, rec, v)
			if err != nil {
				return err
			}
			allowed := v.Version >= rec.MinDecryptionVersion
			if err := p.mod.ctx.SetAttributeValue(sh, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, allowed)}); err != nil {
				return p.mapErr("set CKA_DECRYPT", rec.Name, err)
			}
		}
		return nil
	})
}

// Close implements Provider: closes the sessions and releases the module.
func (p *PKCS11Provider) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.open -= len(idle)
	p.mu.Unlock()
	for _, sh := range idle {
		p.mod.ctx.CloseSession(sh)
	}
	p.mod.release()
	return nil
}

// mapErr maps PKCS#11 return values to the package's sentinels.
func (p *PKCS11Provider) mapErr(op, key string, err error) error {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("pkcs11 %s %q: %w", op, key, err)
	}
	switch uint(e) {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_USER_PIN_NOT_INITIALIZED, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED:
		return fmt.Errorf("%w: pkcs11 %s %q: %v", ErrPermissionDenied, op, key, err)
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_SESSION_HANDLE_INVALID,
		pkcs11.CKR_SESSION_COUNT, pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_HOST_MEMORY:
		return fmt.Errorf("%w: pkcs11 %s %q: %v", ErrUnavailable, op, key, err)
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		p.handles.Range(func(k, v any) bool { p.handles.Delete(k); return true })
		return fmt.Errorf("%w: pkcs11 %s %q: %v", ErrKeyNotFound, op, key, err)
	}
	return fmt.Errorf("pkcs11 %s %q: %v", op, key, err)
}
