package splice

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The per-connection system calls, made raw: all are non-blocking, and some (connect and close
// on loopback, which run the peer's TCP processing inline) take long enough that the scheduler's
// syscall bookkeeping would have its monitor hand the P to another thread, and back, for nothing.

func sysRead(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), e
}

func sysWrite(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(r), e
}

// sysSend writes to a socket without SIGPIPE (a reset peer gives EPIPE).
func sysSend(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
	return int(r), e
}

// splice moves up to n bytes from in to out without blocking.
func splice(in, out, n int) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n),
		unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	return int(r), e
}

func sysClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

func sysShutdown(fd, how int) syscall.Errno {
	_, _, e := unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
	return e
}

func sysEpollAdd(epfd, fd int, ev *unix.EpollEvent) syscall.Errno {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(epfd), unix.EPOLL_CTL_ADD, uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return e
}

func setNoDelay(fd int) {
	one := int32(1)
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, uintptr(unsafe.Pointer(&one)), 4, 0)
}

// sysConnect starts a non-blocking connect to ap from a new socket.
func sysConnect(ap netip.AddrPort) (fd int, op string, e syscall.Errno) {
	var rsa unix.RawSockaddrAny
	family, n := toRaw(ap, &rsa)
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, "socket", e
	}
	fd = int(r)
	setNoDelay(fd)
	_, _, e = unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(n))
	if e != 0 && e != unix.EINPROGRESS && e != unix.EINTR {
		sysClose(fd)
		return -1, "connect", e
	}
	return fd, "", 0
}

func fromRaw(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), ntohs(a.Port))
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), ntohs(a.Port))
	}
	return netip.AddrPort{}
}

func toRaw(ap netip.AddrPort, rsa *unix.RawSockaddrAny) (family int, size uintptr) {
	if ip := ap.Addr(); ip.Is4() || ip.Is4In6() {
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		a.Family = unix.AF_INET
		a.Port = htons(ap.Port())
		a.Addr = ip.Unmap().As4()
		return unix.AF_INET, unsafe.Sizeof(*a)
	}
	a := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
	a.Family = unix.AF_INET6
	a.Port = htons(ap.Port())
	a.Addr = ap.Addr().As16()
	return unix.AF_INET6, unsafe.Sizeof(*a)
}

// The port of a raw sockaddr is in network byte order.
func ntohs(p uint16) uint16 {
	var b [2]byte
	*(*uint16)(unsafe.Pointer(&b[0])) = p
	return binary.BigEndian.Uint16(b[:])
}

func htons(p uint16) uint16 { return ntohs(p) }
