package testkit

import (
	"slices"
	"sync"
	"time"
)

// Clock is a clock whose time moves only through Advance: timers fire, in deadline order, from
// the goroutine that calls Advance, and never otherwise. Its methods are safe for concurrent use.
//
// A package whose clock interface returns its own timer type adapts it in one method, e.g.
//
//	type clock struct{ *testkit.Clock }
//
//	func (c clock) AfterFunc(d time.Duration, f func()) registrar.Timer { return c.Clock.AfterFunc(d, f) }
type Clock struct {
	mu     sync.Mutex
	now    time.Time
	seq    int
	timers []*Timer
}

// Timer is a pending call made by Clock.AfterFunc.
type Timer struct {
	c   *Clock
	at  time.Time
	seq int
	f   func()
}

// NewClock returns a clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Since returns the time elapsed since t on this clock.
func (c *Clock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// AfterFunc schedules f to run when the clock has been advanced by d. A d <= 0 fires on the
// next Advance (even by 0).
func (c *Clock) AfterFunc(d time.Duration, f func()) *Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &Timer{c: c, at: c.now.Add(d), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

// Stop prevents the call if it has not happened yet and reports whether it did so.
func (t *Timer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// Pending returns how many timers are waiting.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves the clock forward by d, firing every timer that falls due on the way, each with
// the clock reading its own deadline, in deadline order (ties in the order they were set). A
// timer set by a firing timer fires too if it falls due within d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		slices.SortFunc(c.timers, func(a, b *Timer) int {
			if c := a.at.Compare(b.at); c != 0 {
				return c
			}
			return a.seq - b.seq
		})
		if len(c.timers) == 0 || c.timers[0].at.After(end) {
			c.now = end
			c.mu.Unlock()
			return
		}
		t := c.timers[0]
		c.timers = c.timers[1:]
		if t.at.After(c.now) {
			c.now = t.at
		}
		c.mu.Unlock()
		t.f()
	}
}
