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
// Bounded: at most max entries, in 64 shards; a full shard drops expired
// entries, then arbitrary ones (map order), to make room.
type tokenCache struct {
	seed   maphash.Seed
	per    int
	shards [64]tokenShard
	hits   atomic.Uint64
	misses atomic.Uint64
}

type tokenShard struct {
	mu sync.RWMutex
	m  map[string]*verifiedToken
	_  [40]byte
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
	c := &tokenCache{seed: maphash.MakeSeed(), per: max/64 + 1}
	for i := range c.shards {
		c.shards[i].m = make(map[string]*verifiedToken)
	}
	return c
}

func (c *tokenCache) shard(tok string) *tokenShard {
	return &c.shards[maphash.String(c.seed, tok)%64]
}

// get returns the entry for tok when it was verified against keyGen and has
// not expired at now (unix seconds, leeway applied by the caller).
func (c *tokenCache) get(tok string, keyGen uint64, now int64) (*verifiedToken, bool) {
	s := c.shard(tok)
	s.mu.RLock()
	e := s.m[tok]
	s.mu.RUnlock()
	if e == nil || e.keyGen != keyGen || now >= e.exp {
		c.misses.Add(1)
		return nil, false
	}
	c.hits.Add(1)
	return e, true
}

func (c *tokenCache) put(tok string, e *verifiedToken, now int64) {
	s := c.shard(tok)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= c.per {
		for k, old := range s.m {
			if now >= old.exp {
				delete(s.m, k)
			}
		}
		for k := range s.m {
			if len(s.m) < c.per {
				break
			}
			delete(s.m, k)
		}
	}
	s.m[tok] = e
}

func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
