package enforcement

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// spool holds encoded audit batches that have not been acknowledged by a
// server yet, oldest first. On disk each batch is one file named
// <seq>-<entries>.batch, written to a temporary name, fsynced and renamed
// (and the directory fsynced), so a batch the spool has taken survives a
// crash or restart. It is bounded by bytes: adding past the bound drops the
// oldest batches, and their entries are counted as dropped. Without a
// directory it is the same structure in memory.
type spool struct {
	dir string
	max int64

	mu      sync.Mutex
	items   []spoolItem
	bytes   int64
	nextSeq uint64
	dropped uint64 // entries
}

type spoolItem struct {
	seq     uint64
	entries int
	size    int64
	body    []byte // memory spool only
}

func openSpool(dir string, maxBytes int64) (*spool, error) {
	s := &spool{dir: dir, max: maxBytes, nextSeq: 1}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, de := range des {
		name := de.Name()
		if strings.HasSuffix(name, ".tmp") {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		base, ok := strings.CutSuffix(name, ".batch")
		if !ok {
			continue
		}
		a, b, ok := strings.Cut(base, "-")
		seq, err1 := strconv.ParseUint(a, 10, 64)
		n, err2 := strconv.Atoi(b)
		info, err3 := de.Info()
		if !ok || err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		s.items = append(s.items, spoolItem{seq: seq, entries: n, size: info.Size()})
		s.bytes += info.Size()
		s.nextSeq = max(s.nextSeq, seq+1)
	}
	slices.SortFunc(s.items, func(a, b spoolItem) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	return s, nil
}

func (s *spool) path(it spoolItem) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d-%d.batch", it.seq, it.entries))
}

// add stores a batch durably (fsynced before add returns), dropping the
// oldest batches when the bound is exceeded.
func (s *spool) add(body []byte, entries int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	it := spoolItem{seq: s.nextSeq, entries: entries, size: int64(len(body))}
	s.nextSeq++
	if s.dir == "" {
		it.body = body
	} else {
		p := s.path(it)
		tmp := p + ".tmp"
		f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		_, err = f.Write(body)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, p)
		}
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("spool audit batch: %w", err)
		}
		syncDir(s.dir)
	}
	s.items = append(s.items, it)
	s.bytes += it.size
	for s.bytes > s.max && len(s.items) > 1 {
		s.removeLocked(0, true)
	}
	return nil
}

// peek returns the oldest batch.
func (s *spool) peek() (seq uint64, body []byte, entries int, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.items) == 0 {
		return 0, nil, 0, false, nil
	}
	it := s.items[0]
	if s.dir == "" {
		return it.seq, it.body, it.entries, true, nil
	}
	b, err := os.ReadFile(s.path(it))
	if err != nil {
		// Unreadable: drop it rather than block every later batch.
		s.removeLocked(0, true)
		return 0, nil, 0, false, err
	}
	return it.seq, b, it.entries, true, nil
}

// remove deletes batch seq (acknowledged, or refused for good: dropped).
func (s *spool) remove(seq uint64, dropped bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.items) > 0 && s.items[0].seq == seq {
		s.removeLocked(0, dropped)
	}
}

func (s *spool) removeLocked(i int, dropped bool) {
	it := s.items[i]
	if s.dir != "" {
		if err := os.Remove(s.path(it)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return
		}
	}
	s.items = slices.Delete(s.items, i, i+1)
	s.bytes -= it.size
	if dropped {
		s.dropped += uint64(it.entries)
	}
}

func (s *spool) stats() (batches, entries int, bytes int64, dropped uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range s.items {
		entries += it.entries
	}
	return len(s.items), entries, s.bytes, s.dropped
}
