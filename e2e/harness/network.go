package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Network is a network namespace standing for one network of a multi-network mesh (Istio's
// `topology.istio.io/network`): only lo, up, with the addresses AddAddr gave it and no route
// anywhere else, so a process in one Network cannot reach an address of another. A sleeping
// process holds the namespace open (a namespace lives while a process is in it); Stop ends it.
// Scenarios reach in with NetNS (DialContext, Listen, Forward) and start peers inside with
// ProcSpec.NetNSPath (StartEwgateIn).
type Network struct {
	Name string
	*NetNS
	Proc *Proc

	aliases atomic.Int64
}

// StartNetwork makes a new network namespace held by a sleeping process.
func StartNetwork(name string) (*Network, error) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		return nil, fmt.Errorf("harness: network %s: %w", name, err)
	}
	p, err := StartProc(ProcSpec{Name: "net-holder-" + name, Path: sleep, Args: []string{"infinity"}, PrivateNet: true})
	if err != nil {
		return nil, fmt.Errorf("harness: network %s: %w", name, err)
	}
	n := &Network{Name: name, Proc: p}
	// The re-exec child brings lo up and then execs sleep: wait until the process is sleep
	// (lo is up) before using the namespace.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	want, err := filepath.EvalSymlinks(sleep)
	if err == nil {
		err = p.WaitFor(ctx, 10*time.Millisecond, func() error {
			exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID()))
			if err != nil {
				return err
			}
			if exe != want {
				return fmt.Errorf("still %s, not yet %s", exe, want)
			}
			return nil
		})
	}
	if err == nil {
		n.NetNS, err = OpenNetNS(p.PID())
	}
	if err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, fmt.Errorf("harness: network %s: %w", name, err)
	}
	return n, nil
}

// AddAddr adds ip/32 to the namespace's lo (as label lo:<n>, beside 127.0.0.1), so a backend can
// listen on an address that exists only in this network. An address already there is kept.
func (n *Network) AddAddr(ip net.IP) error {
	ip4 := ip.To4()
	if ip4 == nil {
		return fmt.Errorf("harness: network %s: %s is not IPv4", n.Name, ip)
	}
	have, err := n.Addrs()
	if err != nil {
		return err
	}
	for _, a := range have {
		if a == ip4.String()+"/32" {
			return nil // already there (another test of this binary added it)
		}
	}
	label := fmt.Sprintf("lo:%d", n.aliases.Add(1))
	nsErr := n.do(func() { err = addAlias(label, ip4) })
	if nsErr != nil {
		return nsErr
	}
	if err != nil {
		return fmt.Errorf("harness: network %s: add %s: %w", n.Name, ip, err)
	}
	return nil
}

// addAlias sets label's address and a /32 mask (SIOCSIFADDR on an unknown lo:<n> label adds an
// address; on "lo" itself it would replace 127.0.0.1).
func addAlias(label string, ip net.IP) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(label)
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr(ip); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
		return fmt.Errorf("SIOCSIFADDR: %w", err)
	}
	if err := ifr.SetInet4Addr(net.IPv4(255, 255, 255, 255).To4()); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, ifr); err != nil {
		return fmt.Errorf("SIOCSIFNETMASK: %w", err)
	}
	return nil
}

// Addrs lists the IPv4 addresses inside the namespace (for checks and failure messages).
func (n *Network) Addrs() ([]string, error) {
	var out []string
	var err error
	nsErr := n.do(func() {
		var as []net.Addr
		if as, err = net.InterfaceAddrs(); err != nil {
			return
		}
		for _, a := range as {
			out = append(out, a.String())
		}
	})
	if nsErr != nil {
		return nil, nsErr
	}
	return out, err
}

// Bridge makes dialAddr inside the network to reachable at listenAddr inside the network from,
// as a cloud load balancer publishes a gateway of one network to another: a listener in from,
// each connection spliced to a new one dialled in to. It stops with the test.
func Bridge(t testing.TB, from *NetNS, listenAddr string, to *NetNS, dialAddr string) {
	t.Helper()
	ln, err := from.Listen("tcp", listenAddr)
	if err != nil {
		t.Fatalf("harness: bridge listener %s: %v", listenAddr, err)
	}
	serveForward(t, ln, func(ctx context.Context) (net.Conn, error) {
		return to.DialContext(ctx, "tcp", dialAddr)
	})
}

// Stop ends the holder process (and with it the namespace, once nothing else is inside).
func (n *Network) Stop() error {
	if n == nil || n.Proc == nil {
		return nil
	}
	if n.NetNS != nil {
		n.NetNS.Close()
	}
	return n.Proc.Stop(5 * time.Second)
}
