package registrar

import (
	"context"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// clock is testkit's clock as a Clock, whose AfterFunc returns a Timer.
type clock struct{ *testkit.Clock }

func (c clock) AfterFunc(d time.Duration, f func()) Timer { return c.Clock.AfterFunc(d, f) }

func get(t *testing.T, q *workQueue) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	k, ok := q.Get(ctx)
	if !ok {
		t.Fatal("no key ready")
	}
	return k
}

func ready(q *workQueue) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ready)
}

func TestQueueDedup(t *testing.T) {
	q := newWorkQueue(clock{testkit.NewClock(time.Time{})}, time.Millisecond, time.Second)
	q.Add("a")
	q.Add("a")
	q.Add("b")
	if n := ready(q); n != 2 {
		t.Fatalf("%d ready, want 2", n)
	}
	k := get(t, q)
	q.Add(k) // added while processing: queued again after Done, not before
	if n := ready(q); n != 1 {
		t.Fatalf("%d ready while %s processing, want 1", n, k)
	}
	q.Done(k)
	if n := ready(q); n != 2 {
		t.Fatalf("%d ready after Done, want 2", n)
	}
}

func TestQueueBackoff(t *testing.T) {
	c := clock{testkit.NewClock(time.Unix(0, 0))}
	q := newWorkQueue(c, 100*time.Millisecond, 300*time.Millisecond)
	var got []time.Duration
	for range 4 {
		got = append(got, q.AddRateLimited("k"))
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond, 300 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backoffs %v, want %v", got, want)
		}
	}
	c.Advance(99 * time.Millisecond)
	if ready(q) != 0 {
		t.Fatal("ready before its delay")
	}
	c.Advance(time.Millisecond)
	if k := get(t, q); k != "k" {
		t.Fatalf("got %q", k)
	}
	q.Done("k")
	q.Forget("k")
	if d := q.AddRateLimited("k"); d != 100*time.Millisecond {
		t.Fatalf("after Forget: backoff %s", d)
	}
	q.ShutDown()
	if _, ok := q.Get(context.Background()); ok {
		t.Fatal("Get after ShutDown returned a key")
	}
}

func TestTokenBucket(t *testing.T) {
	b := newTokenBucket(20, 2)
	now := time.Unix(100, 0)
	if b.take(now) != 0 || b.take(now) != 0 {
		t.Fatal("burst of 2 not granted")
	}
	if w := b.take(now); w != 50*time.Millisecond {
		t.Fatalf("wait %s, want 50ms", w)
	}
	if w := b.take(now.Add(50 * time.Millisecond)); w != 0 {
		t.Fatalf("after 50ms: wait %s", w)
	}
	if w := b.take(now.Add(10 * time.Second)); w != 0 {
		t.Fatalf("after idle: wait %s", w)
	}
}

// Idle is closed once nothing is ready or in flight in the registrar's queue (delayed retries
// and grace timers do not count): tests advance a fake clock, then wait on it.
func (r *Registrar) Idle() <-chan struct{} { return r.queue.Idle() }
