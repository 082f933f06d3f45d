package api

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/allsource/guard/fsm"
	"github.com/allsource/guard/kms"
)

// KMSKeyStore is the kms.KeyStore of a server: key records live in the
// replicated state machine (fsm.CmdPutKMSKey does the compare-and-set inside
// Apply), so every server reads the same keys and can decrypt what any other
// encrypted. Reads are local (a record that lags by an entry only delays the
// moment this server starts using a new version) and served from a cache of
// decoded records that the state machine's change feed invalidates.
//
// PutKey proposes for the caller that WithKMSCaller put in the context (the
// principal whose authority Apply re-checks, and the owner a new key gets);
// without one it refuses.
type KMSKeyStore struct {
	fsm  *fsm.FSM
	node Node

	mu    sync.Mutex
	gen   uint64 // bumped by every invalidation
	cache map[string]*kms.KeyRecord
}

var _ kms.KeyStore = (*KMSKeyStore)(nil)

// NewKMSKeyStore returns the replicated key store of a server.
func NewKMSKeyStore(f *fsm.FSM, node Node) *KMSKeyStore {
	return &KMSKeyStore{fsm: f, node: node, cache: map[string]*kms.KeyRecord{}}
}

type kmsCallerKey struct{}

type kmsCaller struct {
	h     fsm.Header
	owner string
}

// WithKMSCaller returns ctx carrying the header (principal, request id, ip)
// that KMSKeyStore.PutKey proposes with, and the tenant that owns a key it
// creates ("" for a global key).
func WithKMSCaller(ctx context.Context, h fsm.Header, owner string) context.Context {
	return context.WithValue(ctx, kmsCallerKey{}, kmsCaller{h: h, owner: owner})
}

// OnApply invalidates the cached records the applied changes touched (wire
// it into fsm.Options.OnApply). It never blocks.
func (s *KMSKeyStore) OnApply(_ uint64, changes []fsm.Change) {
	for _, c := range changes {
		if c.Kind == fsm.ChangeKMSKey {
			s.mu.Lock()
			s.gen++
			delete(s.cache, c.Key)
			s.mu.Unlock()
		}
	}
}

// OnRestore drops the whole cache (a snapshot replaced the state).
func (s *KMSKeyStore) OnRestore(uint64) {
	s.mu.Lock()
	s.gen++
	clear(s.cache)
	s.mu.Unlock()
}

// GetKey implements kms.KeyStore.
func (s *KMSKeyStore) GetKey(ctx context.Context, name string) (*kms.KeyRecord, error) {
	s.mu.Lock()
	rec, ok := s.cache[name]
	gen := s.gen
	s.mu.Unlock()
	if ok {
		return rec, nil
	}
	var k *fsm.KMSKey
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		k, _ = rd.KMSKey(name)
		return nil
	})
	if k == nil {
		return nil, fmt.Errorf("%w: %q", kms.ErrKeyNotFound, name)
	}
	rec, err := kms.UnmarshalKeyRecord(k.Record)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.gen == gen { // no change was applied since the read: safe to cache
		s.cache[name] = rec
	}
	s.mu.Unlock()
	return rec, nil
}

// PutKey implements kms.KeyStore through raft.
func (s *KMSKeyStore) PutKey(ctx context.Context, rec *kms.KeyRecord) error {
	caller, ok := ctx.Value(kmsCallerKey{}).(kmsCaller)
	if !ok {
		return errors.New("kms key store: no caller in the context (WithKMSCaller)")
	}
	data, err := kms.MarshalKeyRecord(rec)
	if err != nil {
		return err
	}
	owner := caller.owner
	if rec.Revision > 1 {
		var k *fsm.KMSKey
		_ = s.fsm.View(func(rd *fsm.Reader) error {
			k, _ = rd.KMSKey(rec.Name)
			return nil
		})
		if k != nil {
			owner = k.Tenant
		}
	}
	h := caller.h
	h.Time = time.Now().UnixNano()
	c, err := fsm.NewCommand(fsm.CmdPutKMSKey, h, &fsm.PutKMSKeyCmd{Name: rec.Name, Tenant: owner, Revision: rec.Revision, Record: data})
	if err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := s.node.Apply(actx, c)
	if err != nil {
		return err
	}
	if res.Err != nil {
		if res.Err.Code == fsm.CodeConflict {
			if rec.Revision == 1 {
				return fmt.Errorf("%w: %s", kms.ErrKeyExists, res.Err.Message)
			}
			return fmt.Errorf("%w: %s", kms.ErrConflict, res.Err.Message)
		}
		return res.Err
	}
	return nil
}

// ListKeys implements kms.KeyStore.
func (s *KMSKeyStore) ListKeys(ctx context.Context) ([]*kms.KeyRecord, error) {
	var keys []*fsm.KMSKey
	_ = s.fsm.View(func(rd *fsm.Reader) error {
		keys = rd.KMSKeys()
		return nil
	})
	out := make([]*kms.KeyRecord, 0, len(keys))
	for _, k := range keys {
		rec, err := kms.UnmarshalKeyRecord(k.Record)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k.Name, err)
		}
		out = append(out, rec)
	}
	return out, nil
}
