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
	name    string
	address string // as configured
	ln      *net.TCPListener
	acc     *splice.Acceptor // accepts onto the relay engine's loops; nil without the engine
	active  atomic.Int64
	sources conncap.Sources
	closed  atomic.Bool
}

// Without the relay engine, the gateway listens and dials with package net, with no TCP
// keepalive on data-plane sockets (four setsockopt calls per socket in Go's default):
// idle_timeout ends connections whose peers went away. The engine's sockets have none either.
var (
	listenConfig = net.ListenConfig{KeepAlive: -1}
	dialer       = net.Dialer{KeepAlive: -1}
)

func (l *listener) close() {
	l.closed.Store(true)
	l.ln.Close()
	if l.acc != nil {
		l.acc.Close()
	}
}

// accept waits for the next connection, on the relay engine's loops when the listener has them.
func (l *listener) accept() (clientSocket, error) {
	if l.acc != nil {
		return l.acc.Accept()
	}
	return l.ln.AcceptTCP()
}

// acceptLoop accepts l's connections until l is closed and starts each admitted one's goroutine.
func (g *Gateway) acceptLoop(l *listener) {
	defer g.wg.Done()
	var delay time.Duration
	for {
		s, err := l.accept()
		if err != nil {
			if l.closed.Load() {
				return
			}
			g.m.acceptFails.WithLabelValues(l.name).Inc()
			// Out of files or a transient kernel error: back off (5 ms doubling to 1 s) rather than
			// spin, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			g.log.Warn("accept failed; backing off", zap.String("listener", l.name), zap.Duration("delay", delay), zap.Error(err))
			t := time.NewTimer(delay)
			<-t.C
			continue
		}
		delay = 0
		c := g.admit(l, s)
		if c == nil {
			continue
		}
		l.active.Add(1)
		g.m.active.WithLabelValues(l.name).Inc()
		g.m.opened.WithLabelValues(l.name).Inc()
		g.track(c)
		g.wg.Add(1)
		go c.serve()
	}
}

// admit checks the caps that apply before a byte is read and returns the connection, or resets
// s and returns nil (over max_connections or max_connections_per_source).
func (g *Gateway) admit(l *listener, s clientSocket) *conn {
	t := g.snap.Load().Table(l.name)
	peer := addrPort(s.RemoteAddr())
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
