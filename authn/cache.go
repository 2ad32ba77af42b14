package authn

import (
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
)

// tokenCache maps verified tokens to their identity, so a VM reconnecting
// with the same token costs a hash and a map lookup instead of a signature
// verification. It also remembers, briefly, tokens TokenReview called
// revoked, so a revoked token cannot make us flood the apiserver.
//
// Keys are xxhash of the token; the whole token is compared on a hit, so a
// collision is a miss, never another VM's identity. Entries never outlive
// the token's exp; when full, an arbitrary entry is evicted (Go's map order
// is randomized), expired ones first when found.
type tokenCache struct {
	max int
	mu  sync.RWMutex
	m   map[uint64]cacheEntry
}

type cacheEntry struct {
	token   string
	id      *Identity // nil for a negative entry
	err     error     // set for a negative entry
	expires time.Time
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[uint64]cacheEntry)}
}

// get returns the identity (a copy) or the cached refusal of a token.
func (c *tokenCache) get(token string, now time.Time) (*Identity, error, bool) {
	h := hashOf(token)
	c.mu.RLock()
	e, ok := c.m[h]
	c.mu.RUnlock()
	if !ok || e.token != token || !now.Before(e.expires) {
		return nil, nil, false
	}
	if e.id == nil {
		return nil, e.err, true
	}
	id := *e.id
	return &id, nil, true
}

func (c *tokenCache) put(token string, id *Identity, err error, expires, now time.Time) {
	if !now.Before(expires) {
		return
	}
	h := hashOf(token)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[h]; !ok && len(c.m) >= c.max {
		c.evictLocked(now)
	}
	c.m[h] = cacheEntry{token: token, id: id, err: err, expires: expires}
}

// evictLocked removes one entry: the first expired one among a few
// randomly-ordered candidates, or else the first candidate.
func (c *tokenCache) evictLocked(now time.Time) {
	const probes = 8
	var victim uint64
	n := 0
	for h, e := range c.m {
		if n == 0 {
			victim = h
		}
		if !now.Before(e.expires) {
			victim = h
			break
		}
		if n++; n >= probes {
			break
		}
	}
	delete(c.m, victim)
}

func (c *tokenCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

func hashOf(token string) uint64 { return xxhash.Sum64String(token) }
