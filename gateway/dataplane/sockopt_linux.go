package dataplane

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// deferAcceptSeconds is TCP_DEFER_ACCEPT on the listening sockets: the kernel completes the
// handshake but hands a connection to accept only once the client has sent data (the
// ClientHello or the PROXY header), or after about this long if it sends nothing; such a
// connection is then accepted and hello_timeout applies as before. A connection that never
// speaks costs a request socket in the kernel meanwhile, not a file, a count against
// max_connections or a wake-up; one that speaks is accepted with its first bytes there to read.
const deferAcceptSeconds = 1

func deferAccept(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, deferAcceptSeconds)
	})
	if err != nil {
		return err
	}
	return serr
}
