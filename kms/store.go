package kms

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// KeyStore persists key records. In the server it is backed by the
// raft-replicated state machine, so every server sees the same keys and can
// decrypt what any other encrypted; MemKeyStore is the in-memory
// implementation for tests and single-process tools.
//
// An implementation must:
//
//   - GetKey: return the stored record, or an error wrapping ErrKeyNotFound.
//     Callers treat the returned record as read-only (the Keyring clones
//     before changing one), so a store may hand out a shared decoded value
//     as long as it never mutates it; GetKey is on the path of every
//     encryption and decryption, so it should be a local read.
//   - PutKey: compare and set on Revision, atomically. Store rec if
//     rec.Revision == 1 and no record of that name exists, or if the stored
//     record's Revision == rec.Revision-1; otherwise return an error wrapping
//     ErrKeyExists (creation of a taken name) or ErrConflict (stale update).
//     This check is deterministic, so it may run inside the state machine's
//     Apply; everything that needs a clock or randomness has already been
//     done by the Keyring that built rec.
//   - ListKeys: every record, in any order.
//
// A state machine that must not import this package can store the bytes of
// MarshalKeyRecord next to rec.Name and rec.Revision (the two fields the
// compare-and-set needs) and hand the bytes back to UnmarshalKeyRecord.
// Reads may be served from a local replica: a record that lags by a raft
// entry or two only delays when a new version starts being used here.
type KeyStore interface {
	GetKey(ctx context.Context, name string) (*KeyRecord, error)
	PutKey(ctx context.Context, rec *KeyRecord) error
	ListKeys(ctx context.Context) ([]*KeyRecord, error)
}

// MemKeyStore is a KeyStore in memory, safe for concurrent use. Records go
// through MarshalKeyRecord and UnmarshalKeyRecord on the way in, as they
// will through the replicated store, and reads share the decoded value.
type MemKeyStore struct {
	mu   sync.RWMutex
	recs map[string]*KeyRecord
}

// NewMemKeyStore returns an empty store.
func NewMemKeyStore() *MemKeyStore {
	return &MemKeyStore{recs: make(map[string]*KeyRecord)}
}

// GetKey implements KeyStore.
func (s *MemKeyStore) GetKey(ctx context.Context, name string) (*KeyRecord, error) {
	s.mu.RLock()
	r, ok := s.recs[name]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, name)
	}
	return r, nil
}

// PutKey implements KeyStore.
func (s *MemKeyStore) PutKey(ctx context.Context, rec *KeyRecord) error {
	data, err := MarshalKeyRecord(rec)
	if err != nil {
		return err
	}
	stored, err := UnmarshalKeyRecord(data)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, exists := s.recs[rec.Name]
	switch {
	case !exists && rec.Revision == 1:
	case exists && rec.Revision == 1:
		return fmt.Errorf("%w: %q", ErrKeyExists, rec.Name)
	case !exists:
		return fmt.Errorf("%w: %q no longer exists", ErrConflict, rec.Name)
	case cur.Revision != rec.Revision-1:
		return fmt.Errorf("%w: %q is at revision %d, update expected %d", ErrConflict, rec.Name, cur.Revision, rec.Revision-1)
	}
	s.recs[rec.Name] = stored
	return nil
}

// ListKeys implements KeyStore; the records are sorted by name.
func (s *MemKeyStore) ListKeys(ctx context.Context) ([]*KeyRecord, error) {
	s.mu.RLock()
	out := make([]*KeyRecord, 0, len(s.recs))
	for _, r := range s.recs {
		out = append(out, r)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
