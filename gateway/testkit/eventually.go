package testkit

import (
	"testing"
	"time"
)

// EventuallyTimeout is how long Eventually waits: long, because a loaded machine is slow, and
// paid only by a test that is failing anyway.
const EventuallyTimeout = 15 * time.Second

// Eventually waits until cond holds, polling with a backoff from 1 ms to 50 ms, and fails the
// test naming what it waited for if EventuallyTimeout passes first. cond runs on the calling
// goroutine.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(EventuallyTimeout)
	for wait := time.Millisecond; !cond(); wait = min(wait*2, 50*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", EventuallyTimeout, what)
		}
		time.Sleep(wait)
	}
}
