package splice_test

import (
	"errors"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/ewgate/ewgate/gateway/splice"
)

// A proxy's use of the engine: accept onto a loop, read the first bytes, dial the upstream on
// the same loop (Dial sends the bytes read so far), then hand the pair to the loop. Without
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
	a, err := e.NewAcceptor(ln)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()

	c, err := a.Accept() // a *splice.Conn: a net.Conn served by the loop
	if err != nil {
		log.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hello := make([]byte, 4<<10)
	n, err := c.Read(hello) // what the client sent first: route on it
	if err != nil {
		c.Close()
		return
	}
	upstream := netip.MustParseAddrPort("127.0.0.1:8443")
	u, err := c.Dial(upstream, time.Now().Add(5*time.Second), hello[:n])
	if err != nil {
		c.Close()
		return
	}
	p, err := e.Splice(c, u, time.Minute, func(r splice.Result) {
		log.Printf("relayed %d bytes up, %d down (reason %d, error %v)", r.Up, r.Down, r.Reason, r.Err)
	})
	if err != nil { // the Conns are untouched: relay them some other way, or close them
		c.Close()
		u.Close()
		return
	}
	_ = p // p.Cut() at a drain deadline: done then runs with Reason == Cut
}
