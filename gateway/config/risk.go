package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// The admin servers' defaults and checks, and the settings that expose more than their
// operator may think: refused when nothing could justify them, warned about otherwise.
//
// Refused:
//   - proxy_protocol.trusted_cidrs covering every address (0.0.0.0/0, ::/0): any client could
//     send a PROXY header and forge the source address that logs, maglev and per-source limits
//     rely on.
//
// Warned about (File.Warnings; `ewgate serve` logs each at start and reload, `ewgate check`
// prints them and still exits 0):
//   - admin.address not on loopback: the debug pages show every route, endpoint IP, registered
//     VM and issuer to whoever reaches the port.
//   - control_plane.address not on loopback while the built-in control plane runs: it
//     authenticates no caller, so anyone reaching it reads every service and endpoint.

func (a *Admin) setDefaults() {
	field.Default(&a.Address, DefaultAdminAddress)
	field.Default(&a.MaxConnections, DefaultAdminMaxConns)
	field.Default(&a.MaxConnectionsPerSource, DefaultAdminMaxPerSource)
}

func (f *File) validateAdmin(v *validator) {
	a := &f.Admin
	v.hostPort("admin.address", a.Address)
	addrs := []struct{ path, addr string }{{"admin.address", a.Address}}
	if a.StatusAddress != "" {
		v.hostPort("admin.status_address", a.StatusAddress)
		addrs = append(addrs, struct{ path, addr string }{"admin.status_address", a.StatusAddress})
	}
	if a.MetricsAddress != "" {
		v.hostPort("admin.metrics_address", a.MetricsAddress)
		addrs = append(addrs, struct{ path, addr string }{"admin.metrics_address", a.MetricsAddress})
	}
	for i := 1; i < len(addrs); i++ {
		for j := range i {
			if sameSocket(addrs[i].addr, addrs[j].addr) {
				v.add(addrs[i].path, "%s takes the port of %s (%s); each admin server needs its own: debug admin on 127.0.0.1:15000, status (readiness only) on :15021, metrics on :15020",
					addrs[i].addr, addrs[j].path, addrs[j].addr)
			}
		}
	}
	if a.MaxConnections < 0 || a.MaxConnections > 100000 {
		v.add("admin.max_connections", "%d: want 0 (64) to 100000 per server", a.MaxConnections)
	}
	if a.MaxConnectionsPerSource < 0 || a.MaxConnectionsPerSource > a.MaxConnections {
		v.add("admin.max_connections_per_source", "%d: want 0 (16) to admin.max_connections (%d)", a.MaxConnectionsPerSource, a.MaxConnections)
	}
}

// sameSocket reports whether two listen addresses would take the same port: the same port
// (not 0) on the same host or with either host unspecified (0.0.0.0, ::).
func sameSocket(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	if p, err := strconv.Atoi(pa); err != nil || p == 0 {
		return false
	}
	return ha == hb || unspecified(ha) || unspecified(hb)
}

func unspecified(host string) bool {
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// loopback reports whether a listen address's host is a loopback address or localhost.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true // reported by hostPort already
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// risks refuses and warns about the settings listed at the top of this file.
func (f *File) risks(v *validator) {
	for i, l := range f.Listeners {
		if l.ProxyProtocol == nil {
			continue
		}
		for j, c := range l.ProxyProtocol.TrustedCIDRs {
			if p, err := netip.ParsePrefix(c); err == nil && p.Bits() == 0 {
				v.add(fmt.Sprintf("listeners[%d].proxy_protocol.trusted_cidrs[%d]", i, j),
					"%q trusts every address: any client could send a PROXY header and forge its source address (logs, maglev, per-source limits); list only the load balancers' addresses, for example 10.0.0.0/8", c)
			}
		}
	}
	if !loopback(f.Admin.Address) {
		pages := "the debug pages (every route and endpoint IP, every registered VM, issuers and key ids, auth-failure counts)"
		if f.Admin.Pprof {
			pages += " and pprof"
		}
		v.warn("admin.address", "%s is not a loopback address: %s are open to whoever reaches it; keep it on 127.0.0.1:15000 (reached with kubectl port-forward) and serve probes with admin.status_address and Prometheus with admin.metrics_address",
			f.Admin.Address, pages)
	}
	if f.ControlPlaneEnabled() && !loopback(f.ControlPlane.Address) {
		v.warn("control_plane.address", "%s is not a loopback address: the built-in control plane authenticates no caller, so whoever reaches it reads every service and endpoint over xDS; keep it on 127.0.0.1 (VMs come through the authenticated control endpoint, control.address) unless only trusted peers can reach this address", f.ControlPlane.Address)
	}
}
