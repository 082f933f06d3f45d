package enforcement

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newTestBuckets() (*Buckets, *ManualClock) {
	c := NewManualClock(epoch)
	return NewBuckets(BucketsConfig{Clock: c, IdleTimeout: time.Minute}), c
}

func TestBucketBurstThenRefill(t *testing.T) {
	b, c := newTestBuckets()
	lim := Limit{RequestsPerMinute: 60, Burst: 10}
	for i := range 10 {
		r := b.Allow("acme", lim, 1)
		if !r.Allowed || r.Remaining != 9-i || r.Limit != 60 || r.RetryAfter != 0 {
			t.Fatalf("request %d: %+v", i, r)
		}
	}
	r := b.Allow("acme", lim, 1)
	if r.Allowed || r.Remaining != 0 || r.RetryAfter != 1 || r.Reset != 10 {
		t.Fatalf("11th request: %+v, want denied, retry after 1 s, full in 10 s", r)
	}
	c.Advance(999 * time.Millisecond)
	if r := b.Allow("acme", lim, 1); r.Allowed || r.RetryAfter != 1 {
		t.Fatalf("just before the next token: %+v", r)
	}
	c.Advance(time.Millisecond)
	if r := b.Allow("acme", lim, 1); !r.Allowed {
		t.Fatalf("after one second: %+v", r)
	}
	// Another key is independent.
	if r := b.Allow("other", lim, 1); !r.Allowed || r.Remaining != 9 {
		t.Fatalf("other key: %+v", r)
	}
}

func TestBucketRetryAfterRoundsUp(t *testing.T) {
	b, c := newTestBuckets()
	lim := Limit{RequestsPerMinute: 30, Burst: 1} // one token every 2 s
	if !b.Allow("k", lim, 1).Allowed {
		t.Fatal("first request denied")
	}
	if r := b.Allow("k", lim, 1); r.RetryAfter != 2 || r.Reset != 2 {
		t.Fatalf("empty: %+v, want RetryAfter 2", r)
	}
	c.Advance(1500 * time.Millisecond) // 0.75 token: 0.5 s to go
	if r := b.Allow("k", lim, 1); r.Allowed || r.RetryAfter != 1 || r.Reset != 1 {
		t.Fatalf("0.5 s to go: %+v, want RetryAfter 1 (rounded up)", r)
	}
	c.Advance(499 * time.Millisecond) // 1 ms to go: still never 0
	if r := b.Allow("k", lim, 1); r.Allowed || r.RetryAfter != 1 {
		t.Fatalf("1 ms to go: %+v, want RetryAfter 1", r)
	}
	lim = Limit{RequestsPerMinute: 1, Burst: 1} // one a minute; policy change applied live
	c.Advance(time.Millisecond)
	if r := b.Allow("k", lim, 1); !r.Allowed {
		t.Fatalf("token due: %+v", r)
	}
	if r := b.Allow("k", lim, 1); r.RetryAfter != 60 {
		t.Fatalf("one per minute: %+v", r)
	}
}

func TestBucketCost(t *testing.T) {
	b, c := newTestBuckets()
	lim := Limit{RequestsPerMinute: 60, Burst: 10}
	for range 3 {
		if r := b.Allow("k", lim, 3); !r.Allowed {
			t.Fatalf("denied: %+v", r)
		}
	}
	r := b.Allow("k", lim, 3)
	if r.Allowed || r.Remaining != 1 || r.RetryAfter != 2 {
		t.Fatalf("cost 3 with 1 token: %+v, want denied, retry in 2 s", r)
	}
	if r := b.Allow("k", lim, 0); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("cost 0 counts as 1: %+v", r)
	}
	// A cost above the capacity is admitted from a full bucket, into debt.
	c.Advance(10 * time.Second)
	if r := b.Allow("k", lim, 15); !r.Allowed || r.Remaining != 0 || r.Reset != 15 {
		t.Fatalf("cost 15 from a full bucket of 10: %+v", r)
	}
	if r := b.Allow("k", lim, 1); r.Allowed || r.RetryAfter != 6 {
		t.Fatalf("in debt of 5: %+v, want retry in 6 s", r)
	}
	c.Advance(14 * time.Second) // 9 tokens: not full, so the big request waits
	if r := b.Allow("k", lim, 15); r.Allowed || r.RetryAfter != 1 {
		t.Fatalf("cost 15 from 9 tokens: %+v, want retry in 1 s (until full)", r)
	}
	c.Advance(time.Second)
	if r := b.Allow("k", lim, 15); !r.Allowed {
		t.Fatalf("cost 15 from a full bucket again: %+v", r)
	}
}

func TestBucketSetLimitKeepsTokens(t *testing.T) {
	b, c := newTestBuckets()
	lim := Limit{RequestsPerMinute: 60, Burst: 10}
	for range 8 {
		b.Allow("k", lim, 1)
	}
	b.SetLimit("k", Limit{RequestsPerMinute: 60, Burst: 100})
	bigger := Limit{RequestsPerMinute: 60, Burst: 100}
	if r := b.Allow("k", bigger, 1); !r.Allowed || r.Remaining != 1 {
		t.Fatalf("raising the burst must not add tokens: %+v", r)
	}
	c.Advance(5 * time.Second)
	b.SetLimit("k", Limit{RequestsPerMinute: 120, Burst: 3}) // 6 tokens earned, clamped to 3
	faster := Limit{RequestsPerMinute: 120, Burst: 3}
	if r := b.Allow("k", faster, 1); !r.Allowed || r.Remaining != 2 {
		t.Fatalf("clamped to the new burst: %+v", r)
	}
	b.Allow("k", faster, 2)
	c.Advance(500 * time.Millisecond) // 2 tokens a second now
	if r := b.Allow("k", faster, 1); !r.Allowed {
		t.Fatalf("new rate not applied: %+v", r)
	}
	// Burst 0 means burst = rate; SetLimit with no limit forgets the bucket.
	b.SetLimit("k", Limit{RequestsPerMinute: 0})
	if b.Len() != 0 {
		t.Fatalf("unlimited policy kept the bucket")
	}
	if r := b.Allow("k", Limit{RequestsPerMinute: 5}, 1); !r.Allowed || r.Remaining != 4 {
		t.Fatalf("burst defaults to the rate: %+v", r)
	}
}

func TestBucketUnlimited(t *testing.T) {
	b, _ := newTestBuckets()
	for range 1000 {
		if r := b.Allow("k", Limit{}, 5); !r.Allowed || r.Limit != 0 {
			t.Fatalf("unlimited: %+v", r)
		}
	}
	if b.Len() != 0 {
		t.Fatalf("unlimited keys must not hold buckets")
	}
}

func TestBucketShare(t *testing.T) {
	b, c := newTestBuckets()
	lim := Limit{RequestsPerMinute: 60, Burst: 100}
	if err := b.SetShare("k", 0.25); err != nil { // before the first request
		t.Fatal(err)
	}
	n := 0
	for b.Allow("k", lim, 1).Allowed {
		n++
	}
	if n != 25 {
		t.Fatalf("share 0.25 of burst 100 admitted %d", n)
	}
	if r := b.Allow("k", lim, 1); r.RetryAfter != 4 {
		t.Fatalf("share 0.25 of 1/s: retry %d, want 4", r.RetryAfter)
	}
	c.Advance(8 * time.Second) // 2 tokens
	if err := b.SetShare("k", 1); err != nil {
		t.Fatal(err)
	}
	if r := b.Allow("k", lim, 1); !r.Allowed || r.Remaining != 1 {
		t.Fatalf("raising the share keeps tokens: %+v", r)
	}
	c.Advance(time.Second)
	if r := b.Allow("k", lim, 1); !r.Allowed || r.Remaining != 1 {
		t.Fatalf("full rate after share 1: %+v", r)
	}
	// A tiny share still leaves a capacity of one token.
	if err := b.SetShare("k", 0.001); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Hour)
	if r := b.Allow("k", lim, 1); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("tiny share: %+v", r)
	}
	if s, ok := b.Share("k"); !ok || s != 0.001 {
		t.Fatalf("Share = %v %v", s, ok)
	}
	for _, bad := range []float64{0, -1, nan()} {
		if err := b.SetShare("k", bad); err != ErrShare {
			t.Fatalf("SetShare(%v) = %v", bad, err)
		}
	}
	if err := b.SetShare("k", 1.0000001); err != nil {
		t.Fatal(err)
	}
	if s, _ := b.Share("k"); s != 1 {
		t.Fatalf("share above 1 not clamped: %v", s)
	}
	if _, ok := b.Share("nobody"); ok {
		t.Fatalf("Share of an unknown key")
	}
}

func nan() float64 { z := 0.0; return z / z }

func TestBucketDefaultShare(t *testing.T) {
	b, _ := newTestBuckets()
	lim := Limit{RequestsPerMinute: 60, Burst: 100}
	b.Allow("old", lim, 1)
	if err := b.SetDefaultShare(0.2); err != nil {
		t.Fatal(err)
	}
	if err := b.SetDefaultShare(0); err != ErrShare {
		t.Fatalf("SetDefaultShare(0) = %v", err)
	}
	if r := b.Allow("new", lim, 1); r.Remaining != 19 {
		t.Fatalf("new bucket with default share 0.2: %+v", r)
	}
	if r := b.Allow("old", lim, 1); r.Remaining != 98 {
		t.Fatalf("existing bucket changed by the default: %+v", r)
	}
}

func TestBucketEviction(t *testing.T) {
	b, c := newTestBuckets() // idle timeout 1 minute
	fast := Limit{RequestsPerMinute: 600, Burst: 10}
	slow := Limit{RequestsPerMinute: 1, Burst: 100}
	b.Allow("fast", fast, 5)
	for range 50 {
		b.Allow("slow", slow, 1)
	}
	if err := b.SetShare("share-only", 0.5); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 3 {
		t.Fatalf("Len = %d", b.Len())
	}
	c.Advance(59 * time.Second)
	if n := b.EvictIdle(); n != 0 {
		t.Fatalf("evicted %d before the idle timeout", n)
	}
	c.Advance(time.Second)
	// fast refilled long ago, share-only never configured: both go. slow has
	// earned 1 of 50 tokens back: dropping it would hand out 49 tokens.
	if n := b.EvictIdle(); n != 2 || b.Len() != 1 {
		t.Fatalf("evicted %d, %d left; want 2 and 1", n, b.Len())
	}
	if r := b.Allow("slow", slow, 1); r.Remaining != 50 {
		t.Fatalf("slow bucket lost its state: %+v", r)
	}
	if r := b.Allow("fast", fast, 1); !r.Allowed || r.Remaining != 9 {
		t.Fatalf("recreated bucket: %+v", r)
	}
	b.Forget("fast")
	if b.Len() != 1 {
		t.Fatalf("Forget: Len = %d", b.Len())
	}
}

func TestBucketClockBackwards(t *testing.T) {
	b, c := newTestBuckets()
	lim := Limit{RequestsPerMinute: 60, Burst: 1}
	b.Allow("k", lim, 1)
	c.Advance(-time.Hour)
	if r := b.Allow("k", lim, 1); r.Allowed {
		t.Fatalf("clock going back refilled the bucket: %+v", r)
	}
	c.Advance(time.Hour + time.Second)
	if r := b.Allow("k", lim, 1); !r.Allowed {
		t.Fatalf("clock back to normal: %+v", r)
	}
}

// TestBucketNeverExceedsBudget checks the token-bucket bound on random
// traffic: over any prefix [0, T] the admitted cost is at most
// burst + rate·T + (the largest cost, for a debt admission).
func TestBucketNeverExceedsBudget(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for round := range 50 {
		b, c := newTestBuckets()
		lim := Limit{RequestsPerMinute: 1 + r.IntN(600), Burst: 1 + r.IntN(50)}
		share := 0.05 + 0.95*r.Float64()
		if err := b.SetShare("k", share); err != nil {
			t.Fatal(err)
		}
		rate := float64(lim.RequestsPerMinute) * share / 60
		capacity := max(float64(lim.Burst)*share, 1)
		admitted, maxCost, denied := 0.0, 0, 0
		elapsed := 0.0
		for range 3000 {
			d := time.Duration(r.ExpFloat64() * float64(200*time.Millisecond))
			c.Advance(d)
			elapsed += d.Seconds()
			cost := 1 + r.IntN(4)
			res := b.Allow("k", lim, cost)
			if res.Allowed {
				admitted += float64(cost)
				maxCost = max(maxCost, cost)
			} else {
				denied++
				if res.RetryAfter < 1 {
					t.Fatalf("denied with RetryAfter %d", res.RetryAfter)
				}
			}
			if bound := capacity + rate*elapsed + float64(maxCost) + 1e-6; admitted > bound {
				t.Fatalf("round %d: admitted %.1f > bound %.1f after %.1f s", round, admitted, bound, elapsed)
			}
		}
		if denied == 0 && rate*elapsed < 3000 {
			t.Fatalf("round %d: nothing denied (rate %.2f/s over %.0f s)", round, rate, elapsed)
		}
	}
}

// TestBucketConcurrent: with time frozen, exactly the burst is admitted no
// matter how many goroutines race, also while EvictIdle runs.
func TestBucketConcurrent(t *testing.T) {
	b, c := newTestBuckets()
	lim := Limit{RequestsPerMinute: 60, Burst: 1000}
	b.Allow("k", lim, 1)
	c.Advance(2 * time.Minute) // idle and full: evictable until someone takes a token
	var admitted atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
				b.EvictIdle()
			}
		}
	}()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				if b.Allow("k", lim, 1).Allowed {
					admitted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if admitted.Load() != 1000 {
		t.Fatalf("admitted %d with a burst of 1000 and a frozen clock", admitted.Load())
	}
}
