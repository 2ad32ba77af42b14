package front

import (
	"net"
	"sync"
	"time"
)

// streamLimits counts open streams in total and per identity.
type streamLimits struct {
	max, perID int
	mu         sync.Mutex
	total      int
	byID       map[string]int
}

func newStreamLimits(max, perID int) *streamLimits {
	return &streamLimits{max: max, perID: perID, byID: map[string]int{}}
}

// acquire takes a slot for key; it returns the limit that refused it, or "" and the release.
func (l *streamLimits) acquire(key string) (string, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max {
		return "max_streams", nil
	}
	if l.byID[key] >= l.perID {
		return "max_streams_per_identity", nil
	}
	l.total++
	l.byID[key]++
	var once sync.Once
	return "", func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if l.byID[key]--; l.byID[key] == 0 {
				delete(l.byID, key)
			}
		})
	}
}

// connTracker closes VM connections that have had no open stream for the idle timeout. gRPC's
// own MaxConnectionIdle does the same but cannot be counted; this one is, and it also closes
// connections that finish a handshake and never open a stream.
type connTracker struct {
	net.Listener
	idle    time.Duration
	onIdle  func()
	mu      sync.Mutex
	conns   map[string]*trackedConn // by remote address, as gRPC's peer reports it
	stopped bool
}

type trackedConn struct {
	net.Conn
	t         *connTracker
	active    int
	idleSince time.Time
	closeOnce sync.Once
}

func newConnTracker(ln net.Listener, idle time.Duration, onIdle func()) *connTracker {
	return &connTracker{Listener: ln, idle: idle, onIdle: onIdle, conns: map[string]*trackedConn{}}
}

func (t *connTracker) Accept() (net.Conn, error) {
	c, err := t.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, t: t, idleSince: time.Now()}
	t.mu.Lock()
	t.conns[c.RemoteAddr().String()] = tc
	t.mu.Unlock()
	return tc, nil
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.t.mu.Lock()
		if c.t.conns[c.RemoteAddr().String()] == c {
			delete(c.t.conns, c.RemoteAddr().String())
		}
		c.t.mu.Unlock()
	})
	return err
}

// streamStarted and streamEnded keep the count of open streams of the connection of addr.
func (t *connTracker) streamStarted(addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.conns[addr]; c != nil {
		c.active++
	}
}

func (t *connTracker) streamEnded(addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.conns[addr]; c != nil {
		if c.active--; c.active == 0 {
			c.idleSince = time.Now()
		}
	}
}

// reap closes the connections idle since before now-idle; it returns how many.
func (t *connTracker) reap(now time.Time) int {
	var idle []*trackedConn
	t.mu.Lock()
	for _, c := range t.conns {
		if c.active == 0 && now.Sub(c.idleSince) >= t.idle {
			idle = append(idle, c)
		}
	}
	t.mu.Unlock()
	for _, c := range idle {
		c.Close()
		t.onIdle()
	}
	return len(idle)
}

// run reaps every quarter of the idle timeout until done is closed.
func (t *connTracker) run(done <-chan struct{}) {
	tick := time.NewTicker(max(t.idle/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			t.reap(now)
		}
	}
}
