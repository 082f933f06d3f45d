package enforcement

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/allsource/guard/fsm"
)

// viewStore persists an edge's view under its data directory, so a restarted
// edge enforces from its last view before (or without) reaching a server:
//
//	view.snap  the whole view at one index: a header line, then lines of
//	           records; written to a temporary file, fsynced, renamed
//	view.log   change frames applied since the snapshot, one per line,
//	           appended and fsynced (a revocation survives a crash)
//	contact    when a server last confirmed the view (for -max-staleness)
//
// Secrets are stored only as received: sealed with a key derived from the
// join token (fsm.SealViewSecret), never in the clear. The log is compacted
// into a new snapshot once it grows past compactBytes.
type viewStore struct {
	dir       string
	log       *os.File
	logBytes  int64
	dirty     bool // frames written and not yet fsynced
	joinToken string
}

const (
	snapFile     = "view.snap"
	logFile      = "view.log"
	contactFile  = "contact"
	compactBytes = 8 << 20
	storeVersion = 1
)

type snapHeader struct {
	Version int       `json:"version"`
	Index   uint64    `json:"index"`
	Cluster string    `json:"cluster"`
	Saved   time.Time `json:"saved"`
}

type storedFrame struct {
	Index   uint64           `json:"index"`
	Records []fsm.ViewRecord `json:"records"`
}

func openViewStore(dir, joinToken string) (*viewStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &viewStore{dir: dir, joinToken: joinToken}, nil
}

// load returns the persisted view (nil when there is none) and the time a
// server last confirmed it. A damaged tail of the log (a crash mid-write) is
// cut off; a damaged snapshot is ignored (the edge resyncs in full).
func (s *viewStore) load(now time.Time) (*View, time.Time, error) {
	var contact time.Time
	if b, err := os.ReadFile(filepath.Join(s.dir, contactFile)); err == nil {
		_ = contact.UnmarshalText(b)
	}
	f, err := os.Open(filepath.Join(s.dir, snapFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, contact, nil
	}
	if err != nil {
		return nil, contact, err
	}
	defer f.Close()
	rd := bufio.NewReaderSize(f, 1<<20)
	line, err := readLine(rd)
	if err != nil {
		return nil, contact, nil
	}
	var hdr snapHeader
	if json.Unmarshal(line, &hdr) != nil || hdr.Version != storeVersion {
		return nil, contact, nil
	}
	b := NewView().edit(s.joinToken, now)
	for {
		line, err := readLine(rd)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, contact, nil
		}
		var fr storedFrame
		if json.Unmarshal(line, &fr) != nil {
			return nil, contact, nil
		}
		for i := range fr.Records {
			_ = b.apply(&fr.Records[i])
		}
	}
	v := b.build(hdr.Index)
	v.Cluster = hdr.Cluster
	v, err = s.replayLog(v, now)
	return v, contact, err
}

func (s *viewStore) replayLog(v *View, now time.Time) (*View, error) {
	path := filepath.Join(s.dir, logFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return v, nil
	}
	if err != nil {
		return v, err
	}
	defer f.Close()
	rd := bufio.NewReaderSize(f, 1<<20)
	var good int64
	for {
		line, err := readLine(rd)
		if err != nil {
			break
		}
		var fr storedFrame
		if json.Unmarshal(line, &fr) != nil {
			break
		}
		good += int64(len(line)) + 1
		if fr.Index != 0 && fr.Index <= v.Index {
			continue
		}
		b := v.edit(s.joinToken, now)
		for i := range fr.Records {
			_ = b.apply(&fr.Records[i])
		}
		idx := v.Index
		if fr.Index != 0 {
			idx = fr.Index
		}
		nv := b.build(idx)
		nv.Cluster = v.Cluster
		v = nv
	}
	if st, err := f.Stat(); err == nil && st.Size() > good {
		_ = os.Truncate(path, good)
	}
	s.logBytes = good
	return v, nil
}

func readLine(rd *bufio.Reader) ([]byte, error) {
	line, err := rd.ReadBytes('\n')
	if err == io.EOF && len(line) > 0 {
		return nil, io.ErrUnexpectedEOF // no newline: a torn write
	}
	if err != nil {
		return nil, err
	}
	return line[:len(line)-1], nil
}

// saveSnapshot writes v as the new snapshot and empties the log.
func (s *viewStore) saveSnapshot(v *View) error {
	tmp := filepath.Join(s.dir, snapFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	enc := json.NewEncoder(w)
	err = enc.Encode(snapHeader{Version: storeVersion, Index: v.Index, Cluster: v.Cluster, Saved: time.Now().UTC()})
	batch := make([]fsm.ViewRecord, 0, 512)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := enc.Encode(storedFrame{Records: batch})
		batch = batch[:0]
		return err
	}
	if err == nil {
		err = v.Each(func(rec fsm.ViewRecord) error {
			batch = append(batch, rec)
			if len(batch) == cap(batch) {
				return flush()
			}
			return nil
		})
	}
	if err == nil {
		err = flush()
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save view snapshot: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, snapFile)); err != nil {
		return err
	}
	syncDir(s.dir)
	if s.log != nil {
		s.log.Close()
		s.log = nil
	}
	if err := os.Remove(filepath.Join(s.dir, logFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	s.logBytes = 0
	return nil
}

// appendFrame logs one applied change frame; sync makes it durable. The
// replica syncs once the frames that arrived together are written (a burst
// costs one fsync). It reports whether the log has grown enough to compact.
func (s *viewStore) appendFrame(index uint64, recs []fsm.ViewRecord) (compact bool, err error) {
	if s.log == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, logFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return false, err
		}
		s.log = f
	}
	b, err := json.Marshal(storedFrame{Index: index, Records: recs})
	if err != nil {
		return false, err
	}
	b = append(b, '\n')
	if _, err := s.log.Write(b); err != nil {
		return false, err
	}
	s.dirty = true
	s.logBytes += int64(len(b))
	return s.logBytes > compactBytes, nil
}

// sync fsyncs the log if frames were written since the last sync.
func (s *viewStore) sync() error {
	if !s.dirty || s.log == nil {
		return nil
	}
	s.dirty = false
	return s.log.Sync()
}

// saveContact records when a server last confirmed the view (not fsynced:
// losing it makes the edge think itself a little fresher after a crash, by
// at most the save interval).
func (s *viewStore) saveContact(t time.Time) {
	b, _ := t.UTC().MarshalText()
	tmp := filepath.Join(s.dir, contactFile+".tmp")
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, filepath.Join(s.dir, contactFile))
	}
}

func (s *viewStore) close() {
	if s.log != nil {
		_ = s.sync()
		s.log.Close()
		s.log = nil
	}
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
