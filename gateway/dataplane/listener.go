package dataplane

import (
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/splice"

	"github.com/ewgate/ewgate/gateway/internal/conncap"
)

// listener is one bound socket; its settings come from the snapshot's table of the same name.
type listener struct {
	g       *Gateway
	name    string
	address string // as configured
	ln      *net.TCPListener
	acc     *splice.Acceptor // accepts on the relay engine's loops; nil: acceptLoop accepts
	series  listenerSeries
	active  atomic.Int64
	sources conncap.Sources
	closed  atomic.Bool
	backoff atomic.Int64 // the last pause after a failed accept; 0 after one succeeds
}

// Without the relay engine, the gateway listens and dials with package net, with no TCP
// keepalive on data-plane sockets (four setsockopt calls per socket in Go's default):
// idle_timeout ends connections whose peers went away. The engine's sockets have none either.
// Listening sockets defer accepting until the client has sent something (deferAccept).
var (
	listenConfig = net.ListenConfig{KeepAlive: -1, Control: deferAccept}
	dialer       = net.Dialer{KeepAlive: -1}
)

func (l *listener) close() {
	l.closed.Store(true)
	l.ln.Close()
	if l.acc != nil {
		l.acc.Close()
	}
}

// serve starts accepting l's connections: on the relay engine's loops when it runs (l is then
// their AcceptHandler), else on a goroutine of its own (acceptLoop).
func (g *Gateway) serve(l *listener) {
	if e := g.epoll.Load(); e != nil {
		var err error
		if l.acc, err = e.NewAcceptor(l.ln, l); err == nil {
			return
		}
		// Out of files or epoll watches: this listener's connections are relayed with goroutines.
		g.m.relayFallbacks.Inc()
		g.log.Warn("relay engine cannot accept for a listener; its connections are relayed with goroutines",
			zap.String("listener", l.name), zap.Error(err))
	}
	g.wg.Add(1)
	go g.acceptLoop(l)
}

// acceptLoop accepts l's connections with package net until l is closed and starts each
// admitted one's goroutine.
func (g *Gateway) acceptLoop(l *listener) {
	defer g.wg.Done()
	for {
		s, err := l.ln.AcceptTCP()
		if err != nil {
			if l.closed.Load() {
				return
			}
			t := time.NewTimer(l.AcceptFailed(err))
			<-t.C
			continue
		}
		l.backoff.Store(0)
		if c := g.open(l, s); c != nil {
			go c.serve()
		}
	}
}

// Accepted takes a connection the relay engine accepted, on the loop that accepted it: served
// there to the end of its dial when it can be (fast), else on its goroutine.
func (l *listener) Accepted(s *splice.Conn) {
	if l.backoff.Load() != 0 {
		l.backoff.Store(0)
	}
	if c := l.g.open(l, s); c != nil {
		c.fast(s)
	}
}

// AcceptFailed counts a failed accept (out of files, or a transient kernel error) and returns
// how long to pause accepting: 5 ms doubling to 1 s, as net/http does, rather than spin.
func (l *listener) AcceptFailed(err error) time.Duration {
	delay := time.Duration(l.backoff.Load())
	delay = min(max(2*delay, 5*time.Millisecond), time.Second)
	l.backoff.Store(int64(delay))
	l.g.m.acceptFails.WithLabelValues(l.name).Inc()
	l.g.log.Warn("accept failed; backing off", zap.String("listener", l.name), zap.Duration("delay", delay), zap.Error(err))
	return delay
}

// open admits s and starts the bookkeeping done ends: nil when s was refused at accept.
func (g *Gateway) open(l *listener, s clientSocket) *conn {
	c := g.admit(l, s)
	if c == nil {
		return nil
	}
	c.start = g.now()
	l.active.Add(1)
	l.series.active.Inc()
	l.series.opened.Inc()
	g.track(c)
	g.wg.Add(1)
	return c
}

// admit checks the caps that apply before a byte is read and returns the connection, or resets
// s and returns nil (over max_connections or max_connections_per_source).
func (g *Gateway) admit(l *listener, s clientSocket) *conn {
	t := g.snap.Load().Table(l.name)
	var peer netip.AddrPort
	if sc, ok := s.(*splice.Conn); ok {
		peer = sc.RemoteAddrPort() // no net.Addr made and dropped per connection
	} else {
		peer = addrPort(s.RemoteAddr())
	}
	if t == nil || l.active.Load() >= int64(t.Listener.MaxConnections) {
		g.refuseAtAccept(l, s, peer, resultOverLimit)
		return nil
	}
	c := &conn{g: g, l: l, table: t, client: s, clientAddr: peer}
	// Counted on the TCP peer here, before any byte is read; a trusted load balancer's
	// connections are counted on the PROXY header's source once it is read (readProxyHeader).
	if !t.trustsProxy(peer.Addr()) {
		if !l.sources.Acquire(peer.Addr(), t.Listener.MaxConnectionsPerSource) {
			g.refuseAtAccept(l, s, peer, resultOverSource)
			return nil
		}
		c.source = peer.Addr()
	}
	return c
}

// refuseAtAccept resets a connection refused before anything was read from it (over
// max_connections or max_connections_per_source), counts it and writes a sampled log line.
func (g *Gateway) refuseAtAccept(l *listener, s clientSocket, peer netip.AddrPort, result string) {
	conncap.Refuse(s)
	g.m.conns.WithLabelValues(l.name, "", result).Inc()
	ok, dropped := g.refusals.Allow(l.name + "\x00" + result)
	if !ok {
		return
	}
	msg := "connection refused: listener at max_connections"
	if result == resultOverSource {
		msg = "connection refused: source at max_connections_per_source"
	}
	g.log.Warn(msg, zap.String("listener", l.name), zap.Stringer("client", peer),
		zap.String("result", result), zap.Uint64("dropped", dropped))
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
