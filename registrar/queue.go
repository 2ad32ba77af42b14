package registrar

import (
	"context"
	"sync"
	"time"
)

// workQueue is a de-duplicating queue of keys in the manner of client-go's workqueue: a key is
// held by at most one worker at a time, a key added while it is being processed is processed
// again afterwards, and failures back off exponentially per key. Time comes from a Clock.
type workQueue struct {
	clock     Clock
	base, max time.Duration

	mu         sync.Mutex
	ready      []string
	dirty      map[string]bool
	processing map[string]bool
	waiting    map[string]delayed
	failures   map[string]int
	wake       chan struct{} // capacity 1: "there may be work"
	idle       chan struct{} // closed and replaced when the queue becomes idle
	shutdown   bool
}

type delayed struct {
	at    time.Time
	timer Timer
}

func newWorkQueue(clock Clock, base, max time.Duration) *workQueue {
	return &workQueue{
		clock: clock, base: base, max: max,
		dirty: map[string]bool{}, processing: map[string]bool{},
		waiting: map[string]delayed{}, failures: map[string]int{},
		wake: make(chan struct{}, 1), idle: make(chan struct{}),
	}
}

// Add queues key now.
func (q *workQueue) Add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(key)
}

func (q *workQueue) addLocked(key string) {
	if q.shutdown || q.dirty[key] {
		return
	}
	q.dirty[key] = true
	if q.processing[key] {
		return // Done puts it back
	}
	q.ready = append(q.ready, key)
	q.signal()
}

func (q *workQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// AddAfter queues key once d has passed. Of several pending delays for a key the earliest wins.
func (q *workQueue) AddAfter(key string, d time.Duration) {
	if d <= 0 {
		q.Add(key)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shutdown {
		return
	}
	at := q.clock.Now().Add(d)
	if w, ok := q.waiting[key]; ok {
		if !w.at.After(at) {
			return
		}
		w.timer.Stop()
	}
	var t Timer
	t = q.clock.AfterFunc(d, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if w, ok := q.waiting[key]; ok && w.timer == t {
			delete(q.waiting, key)
		}
		q.addLocked(key)
	})
	q.waiting[key] = delayed{at: at, timer: t}
}

// AddRateLimited queues key after its exponential backoff and returns that delay.
func (q *workQueue) AddRateLimited(key string) time.Duration {
	q.mu.Lock()
	n := q.failures[key]
	q.failures[key] = n + 1
	q.mu.Unlock()
	d := q.base
	for i := 0; i < n && d < q.max; i++ {
		d *= 2
	}
	d = min(d, q.max)
	q.AddAfter(key, d)
	return d
}

// Forget clears key's failure count.
func (q *workQueue) Forget(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.failures, key)
}

// Get blocks until a key is ready or the queue is shut down (ok false) or ctx ends.
func (q *workQueue) Get(ctx context.Context) (key string, ok bool) {
	for {
		q.mu.Lock()
		if q.shutdown {
			q.mu.Unlock()
			return "", false
		}
		if len(q.ready) > 0 {
			key = q.ready[0]
			q.ready = q.ready[1:]
			delete(q.dirty, key)
			q.processing[key] = true
			if len(q.ready) > 0 {
				q.signal() // another worker may take the next one
			}
			q.mu.Unlock()
			return key, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-ctx.Done():
			return "", false
		}
	}
}

// Done marks key as processed; if it was added meanwhile it is queued again.
func (q *workQueue) Done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, key)
	if q.dirty[key] && !q.shutdown {
		q.ready = append(q.ready, key)
		q.signal()
	}
	if len(q.ready) == 0 && len(q.processing) == 0 {
		close(q.idle)
		q.idle = make(chan struct{})
	}
}

// Idle returns a channel closed once nothing is ready or being processed (delayed keys do not
// count), for tests that advance a fake clock and then wait for the consequences.
func (q *workQueue) Idle() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.ready) == 0 && len(q.processing) == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	return q.idle
}

// ShutDown stops the delayed adds and makes every Get return.
func (q *workQueue) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.shutdown = true
	for k, w := range q.waiting {
		w.timer.Stop()
		delete(q.waiting, k)
	}
	close(q.wake)
}

// tokenBucket limits the rate of deletes, as istiod does (20/s), so that a mass disconnect
// (a gateway restart, a network partition healing) does not flood the API server.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst)}
}

// take consumes a token and returns 0, or returns how long until one is available.
func (b *tokenBucket) take(now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}

// Clock is the registrar's only source of time: grace periods, lease expiry, retry backoff and the
// delete rate limit all go through it, so tests drive time instead of sleeping.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine (or, for a fake clock, from the goroutine that
	// advances time) once d has elapsed, unless stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call if it has not happened yet and reports whether it did so.
	Stop() bool
}

// SystemClock is the Clock of the real world.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (SystemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }
