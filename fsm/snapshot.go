package fsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/hashicorp/raft"
	bolt "go.etcd.io/bbolt"
)

// Snapshot stream format (version 1):
//
//	magic "ASGSNAP\x01"
//	records: 'B' uvarint(len) name        — start of a bucket
//	         'K' uvarint(len) key uvarint(len) value — one entry of the current bucket
//	'E' sha256(all preceding bytes)        — end, with a checksum of the stream
//
// Buckets and keys come in bolt's byte order, so two replicas holding the same
// state write byte-identical snapshots. The checksum lets a restore from an
// uploaded file refuse a truncated or edited stream before it touches anything.
var snapMagic = []byte("ASGSNAP\x01")

const (
	recBucket = 'B'
	recKV     = 'K'
	recEnd    = 'E'
	// maxRecord bounds one value read from a snapshot stream, so a hostile
	// upload cannot make us allocate without limit. Bucket names and keys are
	// bounded by bolt.MaxKeySize: a stream that validates must also restore,
	// because raft panics when a user restore fails after it was accepted.
	maxRecord = 64 << 20
)

type fsmSnapshot struct {
	tx *bolt.Tx
}

// Persist streams the point-in-time view held by the read transaction.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeSnapshot(s.tx, sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

// Release ends the read transaction. Raft calls it whether Persist ran or not.
func (s *fsmSnapshot) Release() { _ = s.tx.Rollback() }

func writeSnapshot(tx *bolt.Tx, w io.Writer) error {
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 256<<10)
	var scratch [binary.MaxVarintLen64]byte
	put := func(tag byte, parts ...[]byte) error {
		if err := bw.WriteByte(tag); err != nil {
			return err
		}
		for _, p := range parts {
			n := binary.PutUvarint(scratch[:], uint64(len(p)))
			if _, err := bw.Write(scratch[:n]); err != nil {
				return err
			}
			if _, err := bw.Write(p); err != nil {
				return err
			}
		}
		return nil
	}
	if _, err := bw.Write(snapMagic); err != nil {
		return err
	}
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if err := put(recBucket, name); err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			if v == nil { // nested buckets are not used
				return fmt.Errorf("snapshot: unexpected nested bucket %q/%q", name, k)
			}
			return put(recKV, k, v)
		})
	})
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	// The checksum covers everything before the end marker.
	sum := h.Sum(nil)
	if _, err := w.Write(append([]byte{recEnd}, sum...)); err != nil {
		return err
	}
	return nil
}

// ErrBadSnapshot is returned for a stream that is not a valid snapshot.
var ErrBadSnapshot = errors.New("not a valid snapshot")

type snapReader struct {
	r   *bufio.Reader
	h   hash.Hash
	buf bytes.Buffer
}

func (s *snapReader) byte() (byte, error) {
	c, err := s.r.ReadByte()
	if err == nil {
		s.h.Write([]byte{c})
	}
	return c, err
}

// field reads one length-prefixed field of at most max bytes.
func (s *snapReader) field(max uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(byteReaderFunc(s.byte))
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("%w: record of %d bytes", ErrBadSnapshot, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return nil, err
	}
	s.h.Write(b)
	return b, nil
}

type byteReaderFunc func() (byte, error)

func (f byteReaderFunc) ReadByte() (byte, error) { return f() }

// readSnapshot parses a stream, calling bucket and kv for each record in order.
// Either callback may be nil (validation only). It fails with ErrBadSnapshot on
// any malformed, truncated or altered input, and never panics.
func readSnapshot(r io.Reader, bucket func(name []byte) error, kv func(k, v []byte) error) error {
	sr := &snapReader{r: bufio.NewReaderSize(r, 256<<10), h: sha256.New()}
	magic := make([]byte, len(snapMagic))
	if _, err := io.ReadFull(sr.r, magic); err != nil || !bytes.Equal(magic, snapMagic) {
		return fmt.Errorf("%w: bad header", ErrBadSnapshot)
	}
	sr.h.Write(magic)
	inBucket := false
	for {
		tag, err := sr.r.ReadByte()
		if err != nil {
			return fmt.Errorf("%w: truncated", ErrBadSnapshot)
		}
		switch tag {
		case recEnd:
			want := sr.h.Sum(nil)
			got := make([]byte, len(want))
			if _, err := io.ReadFull(sr.r, got); err != nil || !bytes.Equal(got, want) {
				return fmt.Errorf("%w: checksum mismatch", ErrBadSnapshot)
			}
			return nil
		case recBucket:
			sr.h.Write([]byte{tag})
			name, err := sr.field(bolt.MaxKeySize)
			if err != nil || len(name) == 0 {
				return fmt.Errorf("%w: bad bucket record", ErrBadSnapshot)
			}
			inBucket = true
			if bucket != nil {
				if err := bucket(name); err != nil {
					return err
				}
			}
		case recKV:
			sr.h.Write([]byte{tag})
			if !inBucket {
				return fmt.Errorf("%w: entry outside a bucket", ErrBadSnapshot)
			}
			k, err := sr.field(bolt.MaxKeySize)
			if err != nil || len(k) == 0 {
				return fmt.Errorf("%w: bad key record", ErrBadSnapshot)
			}
			v, err := sr.field(maxRecord)
			if err != nil {
				return fmt.Errorf("%w: bad value record", ErrBadSnapshot)
			}
			if kv != nil {
				if err := kv(k, v); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("%w: unknown record %q", ErrBadSnapshot, tag)
		}
	}
}

// ValidateSnapshot reads a whole stream and reports whether it is a well-formed
// snapshot with a matching checksum. The API calls it before handing an upload
// to raft, so a bad upload is refused with nothing changed.
func ValidateSnapshot(r io.Reader) error {
	return readSnapshot(r, nil, nil)
}
