package enforcement

import (
	"errors"
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Limit is a rate-limit policy: a token bucket refilled at RequestsPerMinute
// tokens per minute holding at most Burst tokens. A request costs one or more
// tokens (route classes). RequestsPerMinute ≤ 0 means "no limit"; Burst ≤ 0
// means Burst = RequestsPerMinute (the fsm's rule).
type Limit struct {
	RequestsPerMinute int
	Burst             int
}

func (l Limit) normalized() Limit {
	if l.Burst <= 0 {
		l.Burst = l.RequestsPerMinute
	}
	return l
}

// RateResult is the outcome of one Allow, with what the X-RateLimit headers
// and Retry-After need.
type RateResult struct {
	Allowed bool
	// Limit is the policy's requests per minute (X-RateLimit-Limit); 0 when
	// the key is not limited, and then the other fields mean nothing.
	Limit int
	// Remaining is the whole number of tokens left in this edge's bucket after
	// the request (≥ 0; a request may be worth several tokens).
	Remaining int
	// Reset is the number of seconds, rounded up, until the bucket is full
	// again; 0 when it is full.
	Reset int
	// RetryAfter is, when denied, the number of seconds, rounded up and at
	// least 1, until the bucket holds enough tokens for this request; 0 when
	// allowed.
	RetryAfter int
}

// BucketsConfig configures Buckets.
type BucketsConfig struct {
	// Clock defaults to SystemClock.
	Clock Clock
	// IdleTimeout is how long a bucket must go untouched before EvictIdle may
	// drop it; default 5 minutes. A bucket is only dropped once it has also
	// refilled completely, so eviction never gives a key extra tokens.
	IdleTimeout time.Duration
}

const bucketShards = 64

// Buckets holds one token bucket per key (a tenant id) for this edge.
//
// Hot path: one hash, a read-locked map lookup in one of 64 shards, and the
// bucket's own mutex; different keys never contend on a bucket, and a shard
// is write-locked only to add a key or by EvictIdle.
//
// Fleet share: a bucket's effective rate and capacity are its policy's
// multiplied by this edge's share s ∈ (0,1] of the tenant's fleet-wide budget
// (SetShare, computed by ComputeShare from gossiped demand). The capacity is
// never below 1 token.
//
// Costs above capacity: a request costing more tokens than the bucket can
// hold (possible once a small share shrinks the capacity) is admitted when
// the bucket is full and leaves it in debt, repaid by the refill, so the
// long-run rate still holds instead of such requests failing forever.
//
// Memory: buckets are created on first use; EvictIdle (call it from a ticker)
// drops buckets idle for IdleTimeout that have refilled completely — exactly
// the state a fresh bucket starts in, so eviction is invisible to clients.
type Buckets struct {
	clock        Clock
	base         time.Time
	idle         int64 // ns
	seed         maphash.Seed
	defaultShare atomic.Uint64 // float64 bits
	shards       [bucketShards]bucketShard
}

type bucketShard struct {
	mu sync.RWMutex
	m  map[string]*bucket
	_  [40]byte // keep shards on separate cache lines
}

type bucket struct {
	mu         sync.Mutex
	dead       bool // evicted: callers holding the pointer must look again
	configured bool // a Limit has been applied
	lim        Limit
	share      float64
	perSec     float64 // effective refill, tokens per second
	capacity   float64 // effective capacity, tokens
	tokens     float64
	last       int64 // ns since Buckets.base of the last refill or touch
}

// NewBuckets returns an empty set of buckets.
func NewBuckets(cfg BucketsConfig) *Buckets {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	b := &Buckets{clock: cfg.Clock, base: cfg.Clock.Now(), idle: int64(cfg.IdleTimeout), seed: maphash.MakeSeed()}
	b.defaultShare.Store(math.Float64bits(1))
	for i := range b.shards {
		b.shards[i].m = make(map[string]*bucket)
	}
	return b
}

func (b *Buckets) now() int64 { return int64(b.clock.Now().Sub(b.base)) }

func (b *Buckets) shard(key string) *bucketShard {
	return &b.shards[maphash.String(b.seed, key)%bucketShards]
}

// lookup returns key's bucket, creating it (unconfigured) if needed.
func (b *Buckets) lookup(key string, now int64) *bucket {
	s := b.shard(key)
	s.mu.RLock()
	bk := s.m[key]
	s.mu.RUnlock()
	if bk != nil {
		return bk
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if bk = s.m[key]; bk == nil {
		bk = &bucket{share: math.Float64frombits(b.defaultShare.Load()), last: now}
		s.m[key] = bk
	}
	return bk
}

// with runs fn on key's live bucket under its lock.
func (b *Buckets) with(key string, now int64, fn func(*bucket)) {
	for {
		bk := b.lookup(key, now)
		bk.mu.Lock()
		if bk.dead {
			bk.mu.Unlock()
			continue
		}
		fn(bk)
		bk.mu.Unlock()
		return
	}
}

// Allow takes cost tokens (values below 1 count as 1) from key's bucket under
// policy lim. A policy different from the bucket's last one is applied first,
// as SetLimit would, so policy updates from the replicated view take effect
// on the next request without a separate notification.
func (b *Buckets) Allow(key string, lim Limit, cost int) RateResult {
	if lim.RequestsPerMinute <= 0 {
		return RateResult{Allowed: true}
	}
	lim = lim.normalized()
	if cost < 1 {
		cost = 1
	}
	now := b.now()
	for {
		bk := b.lookup(key, now)
		bk.mu.Lock()
		if bk.dead {
			bk.mu.Unlock()
			continue
		}
		if !bk.configured || bk.lim != lim {
			bk.configure(lim, bk.share, now)
		} else {
			bk.refill(now)
		}
		res := bk.take(float64(cost))
		bk.mu.Unlock()
		return res
	}
}

// SetLimit changes key's policy live. The tokens the bucket holds are kept,
// clamped to the new capacity; raising the burst does not add tokens. A
// policy with RequestsPerMinute ≤ 0 (no limit) forgets the bucket.
func (b *Buckets) SetLimit(key string, lim Limit) {
	if lim.RequestsPerMinute <= 0 {
		b.Forget(key)
		return
	}
	lim = lim.normalized()
	now := b.now()
	b.with(key, now, func(bk *bucket) { bk.configure(lim, bk.share, now) })
}

// ErrShare is returned for a share outside (0, 1].
var ErrShare = errors.New("rate-limit share must be in (0, 1]")

func checkShare(s float64) (float64, error) {
	if math.IsNaN(s) || s <= 0 {
		return 0, ErrShare
	}
	return min(s, 1), nil // tolerate float error above 1
}

// SetShare sets this edge's share s ∈ (0,1] of key's fleet-wide budget: the
// bucket refills at s × rate and holds s × burst tokens (at least 1). Tokens
// held are kept, clamped to the new capacity. Values slightly above 1 (float
// error) are taken as 1.
func (b *Buckets) SetShare(key string, s float64) error {
	s, err := checkShare(s)
	if err != nil {
		return err
	}
	now := b.now()
	b.with(key, now, func(bk *bucket) {
		if bk.configured {
			bk.configure(bk.lim, s, now)
		} else {
			bk.share, bk.last = s, now
		}
	})
	return nil
}

// SetDefaultShare sets the share given to buckets created from now on (before
// SetShare names them). Default 1, right for a lone edge; a fleet should set
// 1/n for n live edges, so that a tenant that appears everywhere at once gets
// no more than its budget before demand has been gossiped.
func (b *Buckets) SetDefaultShare(s float64) error {
	s, err := checkShare(s)
	if err != nil {
		return err
	}
	b.defaultShare.Store(math.Float64bits(s))
	return nil
}

// Share returns key's current share, and false if key has no bucket.
func (b *Buckets) Share(key string) (float64, bool) {
	s := b.shard(key)
	s.mu.RLock()
	bk := s.m[key]
	s.mu.RUnlock()
	if bk == nil {
		return 0, false
	}
	bk.mu.Lock()
	defer bk.mu.Unlock()
	return bk.share, !bk.dead
}

// Forget drops key's bucket (tenant deleted, or no longer limited).
func (b *Buckets) Forget(key string) {
	s := b.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if bk := s.m[key]; bk != nil {
		bk.mu.Lock()
		bk.dead = true
		bk.mu.Unlock()
		delete(s.m, key)
	}
}

// EvictIdle drops buckets untouched for IdleTimeout that have refilled
// completely, and returns how many it dropped.
func (b *Buckets) EvictIdle() int {
	now := b.now()
	n := 0
	for i := range b.shards {
		s := &b.shards[i]
		s.mu.Lock()
		for k, bk := range s.m {
			bk.mu.Lock()
			if bk.evictable(now, b.idle) {
				bk.dead = true
				delete(s.m, k)
				n++
			}
			bk.mu.Unlock()
		}
		s.mu.Unlock()
	}
	return n
}

// Len returns the number of buckets held.
func (b *Buckets) Len() int {
	n := 0
	for i := range b.shards {
		s := &b.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}

func (bk *bucket) refill(now int64) {
	if now > bk.last {
		bk.tokens = min(bk.capacity, bk.tokens+float64(now-bk.last)/1e9*bk.perSec)
		bk.last = now
	}
}

// configure applies a policy and share, keeping the tokens earned so far.
func (bk *bucket) configure(lim Limit, share float64, now int64) {
	if bk.configured {
		bk.refill(now)
	}
	bk.lim, bk.share = lim, share
	bk.perSec = float64(lim.RequestsPerMinute) * share / 60
	bk.capacity = max(float64(lim.Burst)*share, 1)
	if !bk.configured {
		bk.configured = true
		bk.tokens, bk.last = bk.capacity, now
	} else {
		bk.tokens = min(bk.tokens, bk.capacity)
	}
}

func (bk *bucket) take(cost float64) RateResult {
	res := RateResult{Limit: bk.lim.RequestsPerMinute}
	if bk.tokens >= cost || bk.tokens >= bk.capacity {
		bk.tokens -= cost
		res.Allowed = true
	} else {
		res.RetryAfter = max(ceilSeconds((min(cost, bk.capacity)-bk.tokens)/bk.perSec), 1)
	}
	res.Remaining = int(max(bk.tokens, 0))
	res.Reset = ceilSeconds((bk.capacity - bk.tokens) / bk.perSec)
	return res
}

func (bk *bucket) evictable(now, idle int64) bool {
	if now-bk.last < idle {
		return false
	}
	if !bk.configured {
		return true
	}
	return bk.tokens+float64(now-bk.last)/1e9*bk.perSec >= bk.capacity
}

// ceilSeconds rounds a non-negative number of seconds up to a whole second,
// forgiving float error of a microsecond (1.0000000001 s is 1 s, not 2).
func ceilSeconds(s float64) int {
	if s <= 0 {
		return 0
	}
	c := math.Ceil(s - 1e-6)
	if c > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(c)
}
