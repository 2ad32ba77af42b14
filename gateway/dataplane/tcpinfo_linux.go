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
		sc, isSys := c.(syscall.Conn)
		if !isSys {
			return 0, false
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			return 0, false
		}
		var info *unix.TCPInfo
		var serr error
		if err := raw.Control(func(fd uintptr) {
			info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		}); err != nil || serr != nil {
			return 0, false
		}
		sig = sig*31 + info.Bytes_received
		sig = sig*31 + info.Bytes_acked
	}
	return sig, true
}
