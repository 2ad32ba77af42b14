// Package logsample keeps attacker-driven log lines bounded. A Sampler lets, per key (a
// refusal reason, say), the first Burst lines of each Interval through and counts the rest; the
// next line written for that key reports how many were dropped, so a flood shows in the log as
// a few lines with a count instead of megabytes per second. Cap and CapList cut fields whose
// content a client chooses (an SNI, an ALPN list, a node id) to a length a log line can carry.
package logsample

import (
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// MaxKeys bounds the keys a Sampler tracks; lines of keys beyond it share one window.
const MaxKeys = 1024

// Sampler is safe for concurrent use. Its zero value is not usable: call New.
type Sampler struct {
	burst    int
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	keys map[string]*window
}

type window struct {
	start   time.Time
	n       int    // lines written in this window
	dropped uint64 // lines refused since the last one written
}

// New returns a sampler writing at most burst lines per key per interval. If now is nil,
// time.Now is used.
func New(burst int, interval time.Duration, now func() time.Time) *Sampler {
	if now == nil {
		now = time.Now
	}
	return &Sampler{burst: max(burst, 1), interval: interval, now: now, keys: map[string]*window{}}
}

// overflowKey is the window shared by keys beyond MaxKeys.
const overflowKey = "\x00overflow"

// Allow reports whether a line for key may be written now and, when it may, how many lines
// of key were dropped since the last one written (to be logged with it).
func (s *Sampler) Allow(key string) (ok bool, dropped uint64) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.keys[key]
	if w == nil {
		if len(s.keys) >= MaxKeys {
			key = overflowKey
			w = s.keys[key]
		}
		if w == nil {
			w = &window{start: now}
			s.keys[key] = w
		}
	}
	if now.Sub(w.start) >= s.interval {
		w.start, w.n = now, 0
	}
	if w.n >= s.burst {
		w.dropped++
		return false, 0
	}
	w.n++
	dropped, w.dropped = w.dropped, 0
	return true, dropped
}

// Cap returns s cut to at most n bytes, on a UTF-8 boundary, with the number of bytes cut
// appended ("…+123B") when it was cut.
func Cap(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…+" + strconv.Itoa(len(s)-cut) + "B"
}

// CapList returns at most items elements of list, each cut by Cap to n bytes; when elements
// were left out the last one says how many ("…+5 more").
func CapList(list []string, items, n int) []string {
	out := make([]string, 0, min(len(list), items+1))
	for i, s := range list {
		if i == items {
			out = append(out, "…+"+strconv.Itoa(len(list)-items)+" more")
			break
		}
		out = append(out, Cap(s, n))
	}
	return out
}
