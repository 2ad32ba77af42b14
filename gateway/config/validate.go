package config

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/ewgate/ewgate/gateway/config/field"
	"github.com/ewgate/ewgate/sni"
)

// SetDefaults fills every zero optional field with its default. It is the only place defaults
// are decided.
func (f *File) SetDefaults() {
	f.setVMDefaults()
	field.Default(&f.Log.Format, LogJSON)
	field.Default(&f.Log.Level, "info")
	f.Admin.setDefaults()
	field.Default(&f.DrainTimeout, DefaultDrainTimeout)
	field.Default(&f.Reload.WatchInterval, DefaultWatchInterval)
	dp := f.DataPlane()
	dp.SetDefaults()
	f.Relay, f.Listeners, f.Clusters = dp.Relay, dp.Listeners, dp.Clusters
	f.setXDSDefaults()
}

// validator collects the errors and warnings of the whole file with their paths.
type validator struct{ errs, warns field.Errors }

func (v *validator) add(path, format string, args ...any) { v.errs.Add(path, format, args...) }

// warn records a risky setting that a deployment may still justify.
func (v *validator) warn(path, format string, args ...any) { v.warns.Add(path, format, args...) }

// section adds the errors a section's own Validate returned, under the section's key.
func (v *validator) section(key string, err error) {
	v.errs = append(v.errs, field.From(err).Under(key)...)
}

// Validate checks a defaulted File and returns every problem found (nil when it is valid).
// Warnings are set in f.Warnings (without file and line: Parse adds those).
func (f *File) Validate() field.Errors {
	errs, warns := f.validate()
	f.Warnings = warns
	return errs
}

func (f *File) validate() (field.Errors, field.Errors) {
	v := &validator{}
	switch f.Log.Format {
	case LogJSON, LogConsole:
	default:
		v.add("log.format", "%q is not a log format: want json or console", f.Log.Format)
	}
	switch f.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", "%q is not a log level: want debug, info, warn or error", f.Log.Level)
	}
	f.validateAdmin(v)
	if f.DrainTimeout < 0 {
		v.add("drain_timeout", "must not be negative")
	}
	switch f.Relay.Engine {
	case RelayAuto, RelayEpoll, RelayGoroutines:
	default:
		v.add("relay.engine", "%q is not a relay engine: want auto, epoll or goroutines", f.Relay.Engine)
	}
	if f.Relay.Loops < 0 || f.Relay.Loops > 1024 {
		v.add("relay.loops", "%d: want 0 (one per CPU) to 1024", f.Relay.Loops)
	}
	if f.Relay.PipeSize != 0 && (f.Relay.PipeSize < 4096 || f.Relay.PipeSize > 1<<30) {
		v.add("relay.pipe_size", "%d: want 0 (256 KiB) or 4096 to 1073741824 bytes (the kernel rounds up to pages)", f.Relay.PipeSize)
	}
	listeners := f.validateListeners(v)
	clusters := f.validateClusters(v, listeners)
	f.validateRoutes(v, listeners, clusters)
	f.validateXDS(v)
	f.validateVM(v)
	f.risks(v)
	if len(v.errs) == 0 {
		return nil, v.warns
	}
	return v.errs, v.warns
}

func (v *validator) hostPort(path, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(path, "%q is not host:port (for example 127.0.0.1:15443)", addr)
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		v.add(path, "%q: port must be a number from 0 to 65535", addr)
	}
	if host == "" {
		v.add(path, "%q: give the host to listen on or dial (0.0.0.0 for every IPv4 address)", addr)
	}
}

func (f *File) validateListeners(v *validator) map[string]*Listener {
	byName := map[string]*Listener{}
	addrs := map[string]string{}
	for i := range f.Listeners {
		l := &f.Listeners[i]
		p := fmt.Sprintf("listeners[%d]", i)
		if l.Name == "" {
			v.add(p+".name", "required: a unique name that clusters refer to")
		} else if _, dup := byName[l.Name]; dup {
			v.add(p+".name", "%q is used by another listener; names must be unique", l.Name)
		} else {
			byName[l.Name] = l
		}
		switch l.Kind {
		case KindMesh:
			if len(l.Routes) > 0 {
				v.add(p+".routes", "a mesh listener routes by cluster name (the Istio SNI); routes are for ingress listeners")
			}
			if len(l.MeshDomains) > 0 {
				v.add(p+".mesh_domains", "only ingress listeners refuse mesh domains")
			}
			if l.RoutesFrom != RoutesStatic && l.RoutesFrom != RoutesXDS {
				v.add(p+".routes_from", "%q is not a route source: want static (the clusters: list) or xds", l.RoutesFrom)
			}
		case KindIngress:
			if l.RequireIstioALPN != nil {
				v.add(p+".require_istio_alpn", "only mesh listeners check the Istio ALPN")
			}
			if l.RoutesFrom != "" {
				v.add(p+".routes_from", "only mesh listeners take routes from xDS; ingress routes are the routes: list")
			}
		default:
			v.add(p+".kind", "%q is not a listener kind: want mesh or ingress", l.Kind)
		}
		v.hostPort(p+".address", l.Address)
		if other, dup := addrs[l.Address]; dup && !strings.HasSuffix(l.Address, ":0") {
			v.add(p+".address", "%s is also the address of listener %q", l.Address, other)
		}
		addrs[l.Address] = l.Name
		if l.MaxConnections < 0 {
			v.add(p+".max_connections", "must be positive (or 0: a share of the open-file limit)")
		}
		if l.MaxConnectionsPerSource < 0 {
			v.add(p+".max_connections_per_source", "must be positive (or 0: max_connections / %d)", DefaultSourceShare)
		} else if l.MaxConnections > 0 && l.MaxConnectionsPerSource > l.MaxConnections {
			v.add(p+".max_connections_per_source", "%d is more than max_connections (%d): one source could take the whole listener", l.MaxConnectionsPerSource, l.MaxConnections)
		}
		if l.HelloTimeout < 0 {
			v.add(p+".hello_timeout", "must be positive")
		}
		if l.MaxHelloBytes < 512 || l.MaxHelloBytes > 1<<20 {
			v.add(p+".max_hello_bytes", "%d is out of range: want 512 to 1048576 (65536, the default, is the cap of Envoy's TLS inspector)", l.MaxHelloBytes)
		}
		if l.IdleTimeout < 0 {
			v.add(p+".idle_timeout", "must be positive")
		}
		for j, d := range l.MeshDomains {
			if err := sni.ValidHostPattern(d); err != nil || strings.HasPrefix(d, "*") {
				v.add(fmt.Sprintf("%s.mesh_domains[%d]", p, j), "%q is not a DNS suffix such as cluster.local", d)
			}
		}
		validateExport(v, p, l)
		if l.ProxyProtocol != nil {
			if len(l.ProxyProtocol.TrustedCIDRs) == 0 {
				v.add(p+".proxy_protocol.trusted_cidrs", "required: the load balancers' addresses (PROXY headers from anyone else are never trusted)")
			}
			for j, c := range l.ProxyProtocol.TrustedCIDRs {
				if _, err := netip.ParsePrefix(c); err != nil {
					v.add(fmt.Sprintf("%s.proxy_protocol.trusted_cidrs[%d]", p, j), "%q is not a CIDR such as 10.0.0.0/8", c)
				}
			}
		}
	}
	return byName
}

func (f *File) validateClusters(v *validator, listeners map[string]*Listener) map[string]*Cluster {
	byName := map[string]*Cluster{}
	for i := range f.Clusters {
		c := &f.Clusters[i]
		p := fmt.Sprintf("clusters[%d]", i)
		if c.Name == "" {
			v.add(p+".name", "required")
		} else if _, dup := byName[c.Name]; dup {
			v.add(p+".name", "%q is used by another cluster; names must be unique", c.Name)
		} else {
			byName[c.Name] = c
		}
		l, ok := listeners[c.Listener]
		switch {
		case c.Listener == "":
			v.add(p+".listener", "required: the name of the listener this cluster serves")
		case !ok:
			v.add(p+".listener", "no listener is named %q", c.Listener)
		case l.RoutesFromXDS():
			v.add(p+".listener", "listener %q takes its routes from xDS (routes_from: xds); a static cluster may not name it", c.Listener)
		case l.Kind == KindMesh:
			n, err := sni.ParseIstioName(c.Name)
			if err != nil || n.Direction != sni.Outbound {
				v.add(p+".name", "%q: a mesh cluster is named by the Istio SNI that reaches it, outbound_.<port>_.<subset>_.<host> (subset may be empty)", c.Name)
			}
		}
		switch c.LBPolicy {
		case RoundRobin, LeastConn, Maglev:
		default:
			v.add(p+".lb_policy", "%q is not a policy: want round_robin, least_conn or maglev", c.LBPolicy)
		}
		if c.ConnectTimeout < 0 {
			v.add(p+".connect_timeout", "must be positive")
		}
		if c.MaxConnectAttempts < 0 {
			v.add(p+".max_connect_attempts", "must be positive")
		}
		od := c.OutlierDetection
		if od.BaseEjectionTime < 0 || od.MaxEjectionTime < od.BaseEjectionTime {
			v.add(p+".outlier_detection", "want 0 < base_ejection_time <= max_ejection_time")
		}
		if len(c.Endpoints) == 0 {
			v.add(p+".endpoints", "required: at least one endpoint")
		}
		seen := map[string]bool{}
		for j, e := range c.Endpoints {
			ep := fmt.Sprintf("%s.endpoints[%d]", p, j)
			v.hostPort(ep+".address", e.Address)
			if seen[e.Address] {
				v.add(ep+".address", "%s is listed twice in this cluster", e.Address)
			}
			seen[e.Address] = true
		}
	}
	return byName
}

func (f *File) validateRoutes(v *validator, listeners map[string]*Listener, clusters map[string]*Cluster) {
	for i := range f.Listeners {
		l := &f.Listeners[i]
		if l.Kind != KindIngress {
			continue
		}
		hosts := map[string]bool{}
		for j, r := range l.Routes {
			p := fmt.Sprintf("listeners[%d].routes[%d]", i, j)
			if len(r.Hosts) == 0 {
				v.add(p+".hosts", "required: at least one host (app.example.com or *.example.com)")
			}
			for k, h := range r.Hosts {
				hp := fmt.Sprintf("%s.hosts[%d]", p, k)
				h = strings.ToLower(strings.TrimSuffix(h, "."))
				if err := sni.ValidHostPattern(h); err != nil {
					v.add(hp, "%q is not a host name or *.suffix pattern", r.Hosts[k])
					continue
				}
				if d := l.MeshDomainOf(h); d != "" {
					v.add(hp, "%q is under the mesh domain %s; mesh hosts are never reachable from an ingress listener", r.Hosts[k], d)
				}
				if hosts[h] {
					v.add(hp, "%q is routed twice on this listener", r.Hosts[k])
				}
				hosts[h] = true
			}
			c, ok := clusters[r.Cluster]
			switch {
			case r.Cluster == "":
				v.add(p+".cluster", "required")
			case !ok:
				v.add(p+".cluster", "no cluster is named %q", r.Cluster)
			case c.Listener != l.Name:
				v.add(p+".cluster", "cluster %q serves listener %q, not %q; a route never crosses listeners", r.Cluster, c.Listener, l.Name)
			}
		}
	}
}
