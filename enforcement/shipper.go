package enforcement

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/allsource/guard/fsm"
)

// Shipper carries the edge's audit events to the servers (DESIGN.md §5):
// denials, authentication failures, rate-limit hits and IP blocks, and
// API-key use aggregated per key. Events are aggregated in memory (the same
// event from the same caller within one flush interval becomes one entry
// with a count), then every FlushInterval cut into batches and shipped to
// POST /v1/internal/audit, where the leader commits each batch as one raft
// entry. A batch that cannot be shipped goes to the spool (fsynced, bounded,
// oldest dropped first and counted) and is retried oldest first; while the
// spool holds anything, new batches queue behind it, so order is kept.
//
// Durability: a batch is either acknowledged by a server or fsynced in the
// spool before the flush that cut it returns, and Close spools what is still
// in memory; so across an orderly restart nothing is lost, and a crash loses
// at most the events of the last flush interval.
type Shipper struct {
	cfg   ShipperConfig
	log   *slog.Logger
	spool *spool

	mu      sync.Mutex
	agg     map[string]*aggEntry
	order   []string
	dropped atomic.Uint64 // aggregation overflow and refused batches

	uses  sync.Map // key id → *useCell: counted without a lock on the request path
	stats struct {
		shipped, batches, failures atomic.Uint64
	}
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// ShipperConfig configures a Shipper.
type ShipperConfig struct {
	Edge string
	// Dir holds the spool ("" keeps it in memory).
	Dir string
	// MaxSpoolBytes bounds the spool (default 64 MiB).
	MaxSpoolBytes int64
	// FlushInterval (default 250 ms) and MaxBatchBytes (default 512 KiB).
	FlushInterval time.Duration
	MaxBatchBytes int
	// MaxPending bounds distinct aggregated events between flushes (default 20000).
	MaxPending int
	// Send posts one encoded fsm.EdgeAuditBatch; errors wrapping
	// ErrPermanent mean the server refused the batch for good.
	Send   func(ctx context.Context, body []byte) error
	Clock  Clock
	Logger *slog.Logger
}

// ErrPermanent marks a refusal that retrying cannot fix (a malformed batch).
var ErrPermanent = errors.New("refused permanently")

type aggEntry struct {
	in    fsm.AuditInput
	count int
	last  time.Time
}

type useCell struct {
	count atomic.Uint64
	last  atomic.Int64 // unix nanos of the latest use
}

// NewShipper opens the spool (loading batches left by a previous run).
func NewShipper(cfg ShipperConfig) (*Shipper, error) {
	if cfg.MaxSpoolBytes <= 0 {
		cfg.MaxSpoolBytes = 64 << 20
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = 250 * time.Millisecond
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = 512 << 10
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 20000
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	sp, err := openSpool(cfg.Dir, cfg.MaxSpoolBytes)
	if err != nil {
		return nil, err
	}
	s := &Shipper{cfg: cfg, log: cfg.Logger.With("component", "audit-shipper"), spool: sp, agg: map[string]*aggEntry{},
		stop: make(chan struct{}), done: make(chan struct{})}
	if n, e, _, _ := sp.stats(); n > 0 {
		s.log.Info("audit batches left in the spool by a previous run will be shipped", "batches", n, "entries", e)
	}
	return s, nil
}

// Record takes one audit event (never blocks on I/O).
func (s *Shipper) Record(e fsm.AuditInput) {
	key := string(e.Action) + "\x00" + e.Tenant + "\x00" + string(e.Actor.Kind) + "\x00" + e.Actor.ID + "\x00" +
		e.IP + "\x00" + e.Resource + "\x00" + e.Metadata["reason"]
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.agg[key]; a != nil {
		a.count++
		if e.Time.After(a.last) {
			a.last = e.Time
		}
		return
	}
	if len(s.agg) >= s.cfg.MaxPending {
		s.dropped.Add(1)
		return
	}
	s.agg[key] = &aggEntry{in: e, count: 1, last: e.Time}
	s.order = append(s.order, key)
}

// KeyUsed counts one authenticated use of an API key (lock-free once the
// key has a cell: a map load and two atomics).
func (s *Shipper) KeyUsed(id string, at time.Time) {
	v, ok := s.uses.Load(id)
	if !ok {
		v, _ = s.uses.LoadOrStore(id, &useCell{})
	}
	c := v.(*useCell)
	c.count.Add(1)
	ns := at.UnixNano()
	for {
		old := c.last.Load()
		if ns <= old || c.last.CompareAndSwap(old, ns) {
			return
		}
	}
}

// Run flushes and ships until Close.
func (s *Shipper) Run() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.FlushInterval)
	defer t.Stop()
	backoff := time.Duration(0)
	var retryAt time.Time
	for {
		select {
		case <-s.stop:
			s.final()
			return
		case <-t.C:
		}
		now := time.Now()
		if now.Before(retryAt) {
			// Servers were unreachable: keep cutting batches into the spool.
			s.flush(context.Background(), false)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ok := s.flush(ctx, true)
		cancel()
		if ok {
			backoff = 0
			retryAt = time.Time{}
		} else {
			backoff = min(max(2*backoff, 250*time.Millisecond), 10*time.Second)
			retryAt = now.Add(backoff/2 + rand.N(backoff/2+1))
		}
	}
}

// Close ships or spools what is left and stops.
func (s *Shipper) Close() {
	s.once.Do(func() { close(s.stop) })
	<-s.done
}

func (s *Shipper) final() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.flush(ctx, true)
}

// flush cuts the aggregated events into batches, then (when send is set)
// ships the spool and the new batches in order. It reports whether
// everything was shipped.
func (s *Shipper) flush(ctx context.Context, send bool) bool {
	batches := s.cut()
	ok := true
	for _, b := range batches {
		if send && ok {
			if n, _, _, _ := s.spool.stats(); n == 0 {
				err := s.cfg.Send(ctx, b.body)
				if err == nil {
					s.shipped(b.entries)
					continue
				}
				if errors.Is(err, ErrPermanent) {
					s.refused(b.entries, err)
					continue
				}
				s.stats.failures.Add(1)
				ok = false
			}
		}
		if err := s.spool.add(b.body, b.entries); err != nil {
			s.log.Error("could not spool an audit batch; its entries are lost", "err", err, "entries", b.entries)
			s.dropped.Add(uint64(b.entries))
		}
	}
	if !send || !ok {
		return ok
	}
	for {
		seq, body, n, has, err := s.spool.peek()
		if err != nil {
			s.log.Error("dropping an unreadable spooled audit batch", "err", err)
			continue
		}
		if !has {
			return true
		}
		err = s.cfg.Send(ctx, body)
		switch {
		case err == nil:
			s.spool.remove(seq, false)
			s.shipped(n)
		case errors.Is(err, ErrPermanent):
			s.spool.remove(seq, true)
			s.refused(0, err)
		default:
			s.stats.failures.Add(1)
			return false
		}
	}
}

func (s *Shipper) shipped(n int) {
	s.stats.shipped.Add(uint64(n))
	s.stats.batches.Add(1)
}

func (s *Shipper) refused(n int, err error) {
	s.dropped.Add(uint64(n))
	s.log.Error("a server refused an audit batch; dropping it", "err", err)
}

type cutBatch struct {
	body    []byte
	entries int
}

// cut takes the aggregated events and key uses and encodes them into
// batches of at most MaxBatchBytes.
func (s *Shipper) cut() []cutBatch {
	s.mu.Lock()
	agg, order := s.agg, s.order
	s.agg, s.order = make(map[string]*aggEntry, len(agg)), nil
	s.mu.Unlock()
	var uses []fsm.KeyUse
	s.uses.Range(func(k, v any) bool {
		c := v.(*useCell)
		// Swap the count out; a cell with nothing new since the last cut
		// is dropped, so idle keys do not accumulate (a use racing with
		// that delete may be lost: key use is coarse, last-used tracking).
		if n := c.count.Swap(0); n > 0 {
			uses = append(uses, fsm.KeyUse{ID: k.(string), Count: n, LastUsed: time.Unix(0, c.last.Load()).UTC()})
		} else {
			s.uses.CompareAndDelete(k, v)
		}
		return true
	})
	if len(order) == 0 && len(uses) == 0 {
		return nil
	}
	var out []cutBatch
	cur := fsm.EdgeAuditBatch{Edge: s.cfg.Edge}
	size := 0
	emit := func() {
		if len(cur.Entries) == 0 && len(cur.KeyUses) == 0 {
			return
		}
		cur.Batch = newBatchID()
		b, err := json.Marshal(&cur)
		if err != nil {
			s.log.Error("encoding an audit batch failed", "err", err)
			s.dropped.Add(uint64(len(cur.Entries) + len(cur.KeyUses)))
		} else {
			out = append(out, cutBatch{body: b, entries: len(cur.Entries) + len(cur.KeyUses)})
		}
		cur = fsm.EdgeAuditBatch{Edge: s.cfg.Edge}
		size = 0
	}
	for _, k := range order {
		a := agg[k]
		in := a.in
		if a.count > 1 {
			meta := make(map[string]string, len(in.Metadata)+2)
			for mk, mv := range in.Metadata {
				meta[mk] = mv
			}
			meta["count"] = strconv.Itoa(a.count)
			meta["last"] = a.last.UTC().Format(time.RFC3339Nano)
			in.Metadata = meta
		}
		n := approxSize(&in)
		if size+n > s.cfg.MaxBatchBytes || len(cur.Entries) >= 5000 {
			emit()
		}
		cur.Entries = append(cur.Entries, in)
		size += n
	}
	for _, u := range uses {
		if size+96 > s.cfg.MaxBatchBytes || len(cur.KeyUses) >= 5000 {
			emit()
		}
		cur.KeyUses = append(cur.KeyUses, u)
		size += 96
	}
	emit()
	return out
}

func approxSize(in *fsm.AuditInput) int {
	n := 256 + len(in.Tenant) + len(in.Actor.ID) + len(in.Actor.Name) + len(in.Resource) + len(in.IP) +
		len(in.UserAgent) + len(in.RequestID) + len(in.Error)
	for k, v := range in.Metadata {
		n += len(k) + len(v) + 8
	}
	return n
}

func newBatchID() string {
	var b [8]byte
	u := rand.Uint64()
	for i := range b {
		b[i] = byte(u >> (8 * i))
	}
	return hex.EncodeToString(b[:])
}

// ShipperStats describes audit shipping for /health and metrics.
type ShipperStats struct {
	Pending        int    `json:"pending"`
	SpoolBatches   int    `json:"spool_batches"`
	SpoolEntries   int    `json:"spool_entries"`
	SpoolBytes     int64  `json:"spool_bytes"`
	Shipped        uint64 `json:"shipped"`
	Batches        uint64 `json:"batches"`
	SendFailures   uint64 `json:"send_failures"`
	Dropped        uint64 `json:"dropped"`
	DroppedSpool   uint64 `json:"dropped_from_spool"`
	DroppedPending uint64 `json:"dropped_pending"`
}

// Stats returns the shipper's counters. Dropped is every event lost: the
// spool's oldest-first drops plus aggregation overflow and refused batches.
func (s *Shipper) Stats() ShipperStats {
	s.mu.Lock()
	pending := len(s.agg)
	s.mu.Unlock()
	b, e, by, sd := s.spool.stats()
	d := s.dropped.Load()
	return ShipperStats{Pending: pending, SpoolBatches: b, SpoolEntries: e, SpoolBytes: by, Shipped: s.stats.shipped.Load(),
		Batches: s.stats.batches.Load(), SendFailures: s.stats.failures.Load(), Dropped: d + sd, DroppedSpool: sd, DroppedPending: d}
}
