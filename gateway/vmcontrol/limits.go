package vmcontrol

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// streamLimits counts open streams in total and per VM.
type streamLimits struct {
	max, perVM int
	mu         sync.Mutex
	total      int
	byVM       map[string]int
}

func newStreamLimits(max, perVM int) *streamLimits {
	return &streamLimits{max: max, perVM: perVM, byVM: map[string]int{}}
}

// open takes a slot of the total; it returns the limit that refused it, or "" and the release.
func (l *streamLimits) open() (string, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max {
		return "max_streams", nil
	}
	l.total++
	return "", onceFunc(func() {
		l.mu.Lock()
		l.total--
		l.mu.Unlock()
	})
}

// openVM takes a slot of the VM key (see vmKey); it returns the limit that refused it, or ""
// and the release.
func (l *streamLimits) openVM(key string) (string, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byVM[key] >= l.perVM {
		return "max_streams_per_vm", nil
	}
	l.byVM[key]++
	return "", onceFunc(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.byVM[key]--; l.byVM[key] == 0 {
			delete(l.byVM, key)
		}
	})
}

func onceFunc(f func()) func() {
	var once sync.Once
	return func() { once.Do(f) }
}

// authenticating counts the calls of each source address whose credentials are being verified.
type authenticating struct {
	max   int
	mu    sync.Mutex
	bySrc map[netip.Addr]int
}

func newAuthenticating(max int) *authenticating {
	return &authenticating{max: max, bySrc: map[netip.Addr]int{}}
}

// enter takes a slot of src; it returns false when src has max calls being verified.
func (a *authenticating) enter(src netip.Addr) (func(), bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.bySrc[src] >= a.max {
		return nil, false
	}
	a.bySrc[src]++
	return onceFunc(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.bySrc[src]--; a.bySrc[src] <= 0 {
			delete(a.bySrc, src)
		}
	}), true
}

// maxNodeKey bounds the node ID's part of a VM key (the ID is the client's choice).
const maxNodeKey = 256

// vmKey names one VM for the per-VM stream limit: its verified identity and cluster, its source
// address and, on ADS streams, its node ID (two VMs of one group behind one NAT address differ
// there). Counting per identity alone would cap a whole WorkloadGroup, whose VMs share one
// service account, at the limit of one VM.
func vmKey(c *caller, node string) string {
	if len(node) > maxNodeKey {
		node = node[:maxNodeKey]
	}
	return c.id.SPIFFEID + "|" + c.cluster + "|" + c.source.String() + "|" + node
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
