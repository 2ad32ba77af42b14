package splice_test

import (
	"errors"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/ewgate/ewgate/gateway/splice"
)

// proxy sends every connection to one upstream. Its handler runs on the loop that accepted the
// connection: when the client's first bytes are already there and the upstream takes them at
// once, the pair is relaying before the handler returns, with no goroutine. Anything that
// would wait continues on a goroutine.
type proxy struct {
	e        *splice.Engine
	upstream netip.AddrPort
}

func (p proxy) Accepted(c *splice.Conn) {
	first := make([]byte, 4<<10)
	n, err := c.TryRead(first) // route on what the client sent first
	if err == nil {
		u, sent, err := c.DialNoWait(p.upstream, first[:n])
		if err == nil && sent == n {
			if _, err := p.e.SpliceOnLoop(c, u, time.Minute, p.done); err == nil {
				return
			}
		}
		if err == nil {
			u.Close()
		}
		c.Close()
		return
	}
	if !errors.Is(err, splice.ErrNotReady) || c.Watch() != nil {
		c.Close()
		return
	}
	go p.serve(c) // nothing to read yet: wait for it on a goroutine
}

func (p proxy) serve(c *splice.Conn) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	first := make([]byte, 4<<10)
	n, err := c.Read(first)
	if err != nil {
		c.Close()
		return
	}
	u, err := c.Dial(p.upstream, time.Now().Add(5*time.Second), first[:n]) // sends first
	if err != nil {
		c.Close()
		return
	}
	if _, err := p.e.Splice(c, u, time.Minute, p.done); err != nil {
		c.Close() // the Conns are untouched: relay them some other way, or close them
		u.Close()
	}
}

func (proxy) done(r splice.Result) {
	log.Printf("relayed %d bytes up, %d down (reason %d, error %v)", r.Up, r.Down, r.Reason, r.Err)
}

// Accept failures that are not the client's (out of files) pause the listener on that loop.
func (proxy) AcceptFailed(err error) time.Duration {
	log.Printf("accept: %v", err)
	return time.Second
}

// A proxy's use of the engine: an Acceptor runs the proxy's handler on the loops. Without
// epoll and splice, New says ErrUnsupported and the proxy uses package net and io.Copy.
func Example() {
	e, err := splice.New(splice.Options{})
	if errors.Is(err, splice.ErrUnsupported) {
		return // accept, dial and copy with package net instead
	}
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close() // cuts the pairs still relaying
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	a, err := e.NewAcceptor(ln, proxy{e: e, upstream: netip.MustParseAddrPort("127.0.0.1:8443")})
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close() // stops accepting; the pairs relaying go on
}
