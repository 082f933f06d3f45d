package threat

// lru is a bounded map that evicts its least recently used entry: the
// detectors' per-actor and per-source state lives in these, so memory stays
// bounded whatever the number of actors an attack makes up.
type lru[V any] struct {
	cap   int
	items map[string]*lruNode[V]
	head  lruNode[V] // sentinel: head.next is the most recent, head.prev the least
	free  *lruNode[V]
	evict func(key string, v V)
}

type lruNode[V any] struct {
	key        string
	val        V
	prev, next *lruNode[V]
}

func newLRU[V any](capacity int) *lru[V] {
	l := &lru[V]{cap: capacity, items: make(map[string]*lruNode[V], min(capacity, 1024))}
	l.head.next, l.head.prev = &l.head, &l.head
	return l
}

func (l *lru[V]) unlink(n *lruNode[V]) {
	n.prev.next, n.next.prev = n.next, n.prev
}

func (l *lru[V]) pushFront(n *lruNode[V]) {
	n.prev, n.next = &l.head, l.head.next
	l.head.next.prev = n
	l.head.next = n
}

// get returns key's value and marks it recently used.
func (l *lru[V]) get(key string) (V, bool) {
	n, ok := l.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	if l.head.next != n {
		l.unlink(n)
		l.pushFront(n)
	}
	return n.val, true
}

// peek returns key's value without touching its recency.
func (l *lru[V]) peek(key string) (V, bool) {
	n, ok := l.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	return n.val, true
}

// put stores key's value as the most recent, evicting the least recent entry
// when full.
func (l *lru[V]) put(key string, v V) {
	if n, ok := l.items[key]; ok {
		n.val = v
		if l.head.next != n {
			l.unlink(n)
			l.pushFront(n)
		}
		return
	}
	if len(l.items) >= l.cap {
		old := l.head.prev
		l.unlink(old)
		delete(l.items, old.key)
		if l.evict != nil {
			l.evict(old.key, old.val)
		}
		var zero V
		old.val, old.key = zero, ""
		old.next = l.free
		l.free = old
	}
	n := l.free
	if n != nil {
		l.free = n.next
	} else {
		n = &lruNode[V]{}
	}
	n.key, n.val = key, v
	l.items[key] = n
	l.pushFront(n)
}

func (l *lru[V]) delete(key string) {
	if n, ok := l.items[key]; ok {
		l.unlink(n)
		delete(l.items, key)
	}
}

func (l *lru[V]) len() int { return len(l.items) }
