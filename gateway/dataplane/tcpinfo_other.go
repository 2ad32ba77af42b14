//go:build !linux

package dataplane

import (
	"net"
	"syscall"
)

// activity is unknown off Linux: the idle timeout never cuts a connection there.
func activity(...net.Conn) (uint64, bool) { return 0, false }

func finWithoutReset(net.Conn) bool { return false }

// deferAccept does nothing off Linux (no TCP_DEFER_ACCEPT).
func deferAccept(_, _ string, _ syscall.RawConn) error { return nil }
