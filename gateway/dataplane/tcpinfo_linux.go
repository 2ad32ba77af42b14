package dataplane

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// activity returns a signature of the bytes the kernel has received and had acknowledged on
// each TCP socket; it changes whenever a byte moves either way. ok is false when a conn is
// not a TCP socket (then the caller must assume activity).
func activity(conns ...net.Conn) (sig uint64, ok bool) {
	for _, c := range conns {
		info, ok := tcpInfo(c)
		if !ok {
			return 0, false
		}
		sig = sig*31 + info.Bytes_received
		sig = sig*31 + info.Bytes_acked
	}
	return sig, true
}

// finWithoutReset reports whether c's peer ended its side with a FIN and has not reset the
// connection: after a reset the socket is in TCP_CLOSE, and a read that follows the reset (once
// another call took its error) returns 0 like an EOF.
func finWithoutReset(c net.Conn) bool {
	info, ok := tcpInfo(c)
	return ok && info.State != tcpClose
}

const tcpClose = 7 // TCP_CLOSE in the kernel's tcp_states.h

func tcpInfo(c net.Conn) (*unix.TCPInfo, bool) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || serr != nil {
		return nil, false
	}
	return info, true
}
