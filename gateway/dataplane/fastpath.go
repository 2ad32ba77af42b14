package dataplane

import (
	"errors"
	"net/netip"
	"time"

	"github.com/ewgate/ewgate/gateway/splice"
	"github.com/ewgate/ewgate/sni"
)

// The fast path: a connection the relay engine accepted is served on the loop that accepted it,
// from accept to relaying, when nothing on the way has to wait. That is the common case: the
// listening socket has TCP_DEFER_ACCEPT, so the kernel hands the connection over once the
// client's first bytes (the whole ClientHello, as a rule) are there, and on a nearby endpoint
// the connect is over by the time the hello is sent. No goroutine starts and nothing is handed
// between threads: the loop reads the hello, routes it, dials, sends the hello and relays.
//
// At the first step that would wait, the connection goes on, from that step, on a goroutine
// with the steps serve runs: a PROXY header to read, no or part of a hello, a refusal (its
// alert and log line), an endpoint named by host (a DNS lookup), a connect still in progress or
// failed (the next attempts).

// fast serves c on the loop that accepted s: relaying when it returns, or handed to a goroutine
// at the step that waits.
func (c *conn) fast(s *splice.Conn) {
	if c.table.trustsProxy(c.clientAddr.Addr()) {
		c.toGoroutine(s, stepProxyHeader, c.serve)
		return
	}
	c.helloBuf = helloBufs.Get().(*[]byte)
	buf := *c.helloBuf
	if limit := c.table.Listener.MaxHelloBytes; limit > 0 && limit < len(buf) {
		buf = buf[:limit]
	}
	n, err := s.TryRead(buf)
	if err != nil { // nothing yet, or a read error that serve's own read reports
		c.toGoroutine(s, stepHello, c.serve)
		return
	}
	c.peeked = buf[:n]
	hello, err := sni.ParseClientHello(c.peeked)
	if errors.Is(err, sni.ErrTruncated) { // part of a hello: serve reads the rest
		c.toGoroutine(s, stepHello, c.serve)
		return
	}
	var cl *Cluster
	if err == nil {
		cl, err = c.table.Route(hello, c.clientAddr.Addr())
	}
	if err != nil { // serve parses the hello again and refuses it: alert, log line
		c.toGoroutine(s, stepRefused, c.serve)
		return
	}
	c.l.series.peek.Observe(time.Since(c.start).Seconds())
	c.hello, c.cluster = cl.share(hello), cl
	c.dialFast(s)
}

// dialFast tries the first endpoint without waiting, and relays on the loop when it took the
// hello at once. Otherwise the dial goes on on a goroutine: the rest of this attempt's send,
// or the next attempts.
func (c *conn) dialFast(s *splice.Conn) {
	cl := c.cluster
	now := c.g.now()
	e := cl.lb.pick(c.hash(), nil, now.UnixNano())
	var ap netip.AddrPort
	var err error
	if e != nil {
		ap, err = netip.ParseAddrPort(e.Address)
	}
	if e == nil || err != nil { // no endpoint (dial says so), or a host name: the lookup waits
		c.toGoroutine(s, stepDial, func() { c.finish(true, c.dial(nil, nil)) })
		return
	}
	u, sent, err := s.DialNoWait(ap, c.peeked)
	switch {
	case err != nil:
		c.dialed(e, nil, err, now)
		c.toGoroutine(s, stepDial, func() { c.finish(true, c.dial([]*Endpoint{e}, err)) })
	case sent < len(c.peeked):
		deadline := time.Now().Add(cl.Config.ConnectTimeout)
		c.toGoroutine(s, stepDial, func() {
			err := u.FinishDial(c.peeked[sent:], deadline)
			if c.dialed(e, u, err, now) {
				c.finish(true, true)
				return
			}
			c.finish(true, c.dial([]*Endpoint{e}, err))
		})
	default:
		c.dialed(e, u, nil, now)
		c.freeHello()
		if err := (epollEngine{c.g.epoll.Load()}).start(c, true); err != nil {
			c.toGoroutine(s, stepRelay, c.relay) // relay says why, and relays with goroutines
		}
	}
}

// The steps at which a connection leaves the loop for a goroutine
// (ewgate_connection_handoffs_total).
const (
	stepProxyHeader = "proxy_header"
	stepHello       = "hello"
	stepRefused     = "refused"
	stepDial        = "dial"
	stepRelay       = "relay"
)

// toGoroutine continues c on a goroutine of its own, with next, and counts the hand-off at
// step. s is watched first: the goroutine's calls on it wait for the loop. If it cannot be, s
// is closed, and next fails at its first call on it.
func (c *conn) toGoroutine(s *splice.Conn, step string, next func()) {
	c.g.m.handoffs.WithLabelValues(c.l.name, step).Inc()
	if err := s.Watch(); err != nil {
		s.Close()
	}
	go next()
}
