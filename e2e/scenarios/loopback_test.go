package scenarios

import (
	"testing"

	"github.com/ewgate/ewgate/e2e/harness"
)

// assertLoopbackOnly fails t if any of the peers listens on an address outside 127.0.0.0/8 or
// ::1 (the rule for everything these tests run), and returns how many listeners it saw.
func assertLoopbackOnly(t *testing.T, procs ...*harness.Proc) int {
	t.Helper()
	n := 0
	for _, p := range procs {
		ls, err := harness.Listeners(p.PID())
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		for _, ap := range ls {
			n++
			if !ap.Addr().IsLoopback() {
				t.Errorf("%s (pid %d) listens on %v, outside loopback", p.Name, p.PID(), ap)
			}
		}
	}
	return n
}

// The shared peers listen on loopback only: etcd (client, peer), the apiserver, and istiod's
// gRPC, HTTP, webhook, monitoring and ctrlz ports.
func TestSharedPeersListenOnlyOnLoopback(t *testing.T) {
	cluster.LogOnFailure(t)
	if n := assertLoopbackOnly(t, cluster.Procs()...); n < 2+1+5 {
		t.Fatalf("saw %d listeners, want at least 8 (is /proc readable?)", n)
	}
}
