package enforcement

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/allsource/guard/auth"
)

// tokenCache remembers access tokens whose signature and claims verified, so
// an edge pays for an Ed25519 check (~60 µs) once per token, not per request.
// An entry is good until the token expires and only for the key set it was
// verified against (keyGen): rotating or retiring a signing key invalidates
// every entry. Revocation, the user's status and tokens_valid_after, and the
// tenant's status are not cached: the pipeline checks them on every request.
//
// Lookups take no lock (sync.Map per shard). Bounded: at most about max
// entries in 64 shards; a full shard drops expired entries, then arbitrary
// ones, to make room (concurrent inserts may overshoot by a few).
type tokenCache struct {
	seed   maphash.Seed
	per    int64
	shards [64]tokenShard
	hits   atomic.Uint64
	misses atomic.Uint64
}

type tokenShard struct {
	m     sync.Map // token → *verifiedToken
	n     atomic.Int64
	evict sync.Mutex // one evictor per shard at a time
	_     [32]byte
}

// verifiedToken is what the pipeline needs of a verified token's claims.
type verifiedToken struct {
	sub, tenant, jti, fam string
	role                  auth.Role
	iat, exp              int64 // unix seconds
	keyGen                uint64
}

func newTokenCache(max int) *tokenCache {
	if max <= 0 {
		max = 65536
	}
	return &tokenCache{seed: maphash.MakeSeed(), per: int64(max/64 + 1)}
}

func (c *tokenCache) shard(tok string) *tokenShard {
	return &c.shards[maphash.String(c.seed, tok)%64]
}

// get returns the entry for tok when it was verified against keyGen and has
// not expired at now (unix seconds, leeway applied by the caller).
func (c *tokenCache) get(tok string, keyGen uint64, now int64) (*verifiedToken, bool) {
	v, ok := c.shard(tok).m.Load(tok)
	if !ok {
		c.misses.Add(1)
		return nil, false
	}
	e := v.(*verifiedToken)
	if e.keyGen != keyGen || now >= e.exp {
		c.misses.Add(1)
		return nil, false
	}
	c.hits.Add(1)
	return e, true
}

func (c *tokenCache) put(tok string, e *verifiedToken, now int64) {
	s := c.shard(tok)
	if s.n.Load() >= c.per {
		s.evict.Lock()
		s.m.Range(func(k, v any) bool {
			if now >= v.(*verifiedToken).exp {
				if _, loaded := s.m.LoadAndDelete(k); loaded {
					s.n.Add(-1)
				}
			}
			return true
		})
		s.m.Range(func(k, _ any) bool {
			if s.n.Load() < c.per {
				return false
			}
			if _, loaded := s.m.LoadAndDelete(k); loaded {
				s.n.Add(-1)
			}
			return true
		})
		s.evict.Unlock()
	}
	if _, loaded := s.m.Swap(tok, e); !loaded {
		s.n.Add(1)
	}
}

func (c *tokenCache) len() int {
	n := int64(0)
	for i := range c.shards {
		n += c.shards[i].n.Load()
	}
	return int(n)
}
