package logsample

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestSamplerBurstThenCountsDropped(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	s := New(3, time.Second, c.now)
	written := 0
	for range 10 {
		if ok, _ := s.Allow("bad_token"); ok {
			written++
		}
	}
	if written != 3 {
		t.Fatalf("first window wrote %d lines, want 3", written)
	}
	// Another key has its own window.
	if ok, d := s.Allow("not_tls"); !ok || d != 0 {
		t.Fatalf("other key: ok=%v dropped=%d, want true 0", ok, d)
	}
	c.add(time.Second)
	ok, dropped := s.Allow("bad_token")
	if !ok || dropped != 7 {
		t.Fatalf("next window: ok=%v dropped=%d, want true 7", ok, dropped)
	}
	if ok, dropped := s.Allow("bad_token"); !ok || dropped != 0 {
		t.Fatalf("second line of the window: ok=%v dropped=%d, want true 0", ok, dropped)
	}
}

func TestSamplerKeysAreBounded(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	s := New(1, time.Second, c.now)
	for i := range MaxKeys * 3 {
		s.Allow(strconv.Itoa(i))
	}
	if len(s.keys) > MaxKeys+1 {
		t.Fatalf("%d keys tracked, want at most %d", len(s.keys), MaxKeys+1)
	}
	// Keys past the bound share one window: one line for all of them per interval.
	if ok, _ := s.Allow("yet-another"); ok {
		t.Fatal("a key beyond MaxKeys got a window of its own")
	}
}

func TestCap(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"abcdefghijkl", 4, "abcd…+8B"},
		{"ééé", 3, "é…+4B"}, // 2-byte runes: no cut inside one
	} {
		if got := Cap(tc.in, tc.n); got != tc.want {
			t.Errorf("Cap(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
	long := strings.Repeat("h2", 10000)
	if got := Cap(long, 64); len(got) > 64+16 {
		t.Errorf("Cap of 20000 bytes to 64 gave %d bytes", len(got))
	}
}

func TestCapList(t *testing.T) {
	list := []string{"istio", strings.Repeat("x", 100), "h2", "http/1.1"}
	got := CapList(list, 2, 8)
	want := []string{"istio", "xxxxxxxx…+92B", "…+2 more"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("CapList = %q, want %q", got, want)
	}
	if got := CapList(list[:2], 5, 200); len(got) != 2 || got[1] != list[1] {
		t.Fatalf("CapList under the bounds changed the list: %q", got)
	}
}
