package kms

import (
	"container/list"
	"crypto/cipher"
	"crypto/sha256"
	"sync"
	"time"
)

// CacheConfig bounds the data-key cache of an Encryptor.
//
// Two kinds of entries share one LRU list:
//
//   - encryption entries, keyed by (key name, key incarnation, key version,
//     tenant, field): a data key and its wrapping, reused for up to MaxUses
//     encryptions within TTL. With the cache on, a field ciphertext
//     therefore gets a fresh data key per object only when there is no
//     live entry for its exact context; a burst of N encryptions in one
//     context costs ceil(N/MaxUses) backend calls instead of N. Nonces stay
//     random 96-bit values, far below the 2^32 messages per key that GCM
//     allows.
//   - decryption entries, keyed by the same fields plus the SHA-256 of the
//     wrapped data key: the unwrapped key, reused for up to MaxUses
//     decryptions within TTL.
//
// Every field of the key takes part in equality, so an entry made for one
// tenant, field, key or version is never returned for another; and the
// key's record is checked (min_decryption_version, existence of the
// version) before the cache is consulted, so a cached key never outlives
// its version's retirement. Keys are held as ready cipher.AEAD values; the
// raw bytes are zeroed as soon as the AEAD is built.
type CacheConfig struct {
	// Disabled turns the cache off: every encryption gets a fresh data key
	// from the backend, every decryption unwraps.
	Disabled bool
	// TTL is how long an entry lives after it is made (default 5 minutes).
	TTL time.Duration
	// MaxUses is how many operations one entry serves (default 10000).
	MaxUses int
	// MaxEntries bounds the number of entries; the least recently used go
	// first (default 10000).
	MaxEntries int
}

const (
	defaultCacheTTL     = 5 * time.Minute
	defaultCacheUses    = 10000
	defaultCacheEntries = 10000
)

func (c CacheConfig) withDefaults() CacheConfig {
	if c.TTL <= 0 {
		c.TTL = defaultCacheTTL
	}
	if c.MaxUses <= 0 {
		c.MaxUses = defaultCacheUses
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = defaultCacheEntries
	}
	return c
}

// CacheStats counts cache events since the Encryptor was made.
type CacheStats struct {
	Hits         uint64 // an entry served the operation
	Misses       uint64 // no live entry: the backend was called
	Expired      uint64 // entries dropped because their TTL passed
	Exhausted    uint64 // entries dropped because their use limit was reached
	Evicted      uint64 // entries dropped to stay within MaxEntries
	Entries      int    // entries now
	BackendCalls uint64 // data keys generated or unwrapped by the backend on a miss (concurrent misses share one call)
}

type cacheOp byte

const (
	opEncrypt cacheOp = 'e'
	opDecrypt cacheOp = 'd'
)

type cacheKey struct {
	op          cacheOp
	key         string
	incarnation int64 // the record's CreatedAt: a key deleted and re-created under the same name never shares entries
	version     int
	tenant      string
	field       string
	wrappedHash [sha256.Size]byte // decrypt entries only
}

type cacheEntry struct {
	k        cacheKey
	aead     cipher.AEAD
	wrapped  []byte // encrypt entries: the wrapped data key to put in the ciphertext
	expires  time.Time
	usesLeft int
}

type dekCache struct {
	cfg   CacheConfig
	now   func() time.Time
	mu    sync.Mutex
	ll    *list.List
	items map[cacheKey]*list.Element
	stats CacheStats
}

func newDEKCache(cfg CacheConfig, now func() time.Time) *dekCache {
	return &dekCache{cfg: cfg.withDefaults(), now: now, ll: list.New(), items: map[cacheKey]*list.Element{}}
}

// take returns a live entry's AEAD (and wrapped key) and counts one use.
// countMiss says whether a miss is counted (a re-check is not a new miss).
func (c *dekCache) take(k cacheKey, countMiss bool) (cipher.AEAD, []byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		if countMiss {
			c.stats.Misses++
		}
		return nil, nil, false
	}
	e := el.Value.(*cacheEntry)
	if !c.now().Before(e.expires) {
		c.remove(el)
		c.stats.Expired++
		if countMiss {
			c.stats.Misses++
		}
		return nil, nil, false
	}
	e.usesLeft--
	if e.usesLeft <= 0 {
		c.remove(el)
		c.stats.Exhausted++
	} else {
		c.ll.MoveToFront(el)
	}
	c.stats.Hits++
	return e.aead, e.wrapped, true
}

// put stores a new entry of which the caller has already made `used` uses.
func (c *dekCache) put(k cacheKey, aead cipher.AEAD, wrapped []byte, used int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.MaxUses-used <= 0 {
		return
	}
	if el, ok := c.items[k]; ok {
		c.remove(el)
	}
	e := &cacheEntry{k: k, aead: aead, wrapped: wrapped, expires: c.now().Add(c.cfg.TTL), usesLeft: c.cfg.MaxUses - used}
	c.items[k] = c.ll.PushFront(e)
	for c.ll.Len() > c.cfg.MaxEntries {
		c.remove(c.ll.Back())
		c.stats.Evicted++
	}
}

func (c *dekCache) remove(el *list.Element) {
	e := c.ll.Remove(el).(*cacheEntry)
	delete(c.items, e.k)
}

// purge drops every entry (of one key when name is not empty).
func (c *dekCache) purge(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.ll.Front(); el != nil; {
		next := el.Next()
		if name == "" || el.Value.(*cacheEntry).k.key == name {
			c.remove(el)
		}
		el = next
	}
}

func (c *dekCache) countBackendCall() {
	c.mu.Lock()
	c.stats.BackendCalls++
	c.mu.Unlock()
}

func (c *dekCache) snapshot() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = c.ll.Len()
	return s
}
