//go:build !linux

package dataplane

import "net"

// activity is unknown off Linux: the idle timeout never cuts a connection there.
func activity(...net.Conn) (uint64, bool) { return 0, false }

func finWithoutReset(net.Conn) bool { return false }
