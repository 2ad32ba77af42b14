package dataplane

import (
	"strings"
	"time"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// The data plane's own configuration: what it serves (Config) and the sections of the file that
// describe it (listeners, clusters, relay). Package config reads the whole file and hands the data
// plane a Config; nothing here knows the other sections.

// Config is what the data plane serves: the relay engine, the listeners and the clusters behind
// them, with defaults already resolved (config.File.SetDefaults, or SetDefaults on each listener
// and cluster). Apply does not modify it.
type Config struct {
	Relay     Relay
	Listeners []Listener
	Clusters  []ClusterConfig
	// FDHolders are the other parts of the process that may hold open files up to a cap (the VM
	// control endpoint, the admin servers). They share the open-file budget with the listeners
	// (PlanFiles). None: the listeners share the budget with the reserve alone.
	FDHolders []FDHolder
}

// Listener kinds.
const (
	KindMesh    = "mesh"    // Istio AUTO_PASSTHROUGH: outbound_ SNI + Istio ALPN, routes are cluster names
	KindIngress = "ingress" // untrusted traffic: host patterns -> clusters, never a mesh cluster
)

// Load-balancing policies.
const (
	RoundRobin = "round_robin"
	LeastConn  = "least_conn"
	Maglev     = "maglev"
)

// Where a mesh listener's routes come from (Listener.RoutesFrom).
const (
	RoutesStatic = "static" // the clusters: list of this file
	RoutesXDS    = "xds"    // an xDS control plane (istiod or the built-in one); no clusters: may name the listener
)

// Defaults of the data plane's sections, resolved by SetDefaults and documented in docs/config.md.
const (
	// DefaultMeshAddress is the address of the one mesh listener of a config that names none.
	DefaultMeshAddress = "127.0.0.1:15443"
	// DefaultMaxConnections is the most a listener that leaves max_connections unset may get; the
	// gateway gives it an equal share of the open-file limit, up to this (docs/operations.md
	// "File limits").
	DefaultMaxConnections = 10000
	// DefaultSourceShare: a listener that leaves max_connections_per_source unset lets one source
	// address hold at most max_connections / DefaultSourceShare connections.
	DefaultSourceShare = 4
	// MinSourceDefault is the least the default max_connections_per_source gives (up to
	// max_connections itself, for small caps).
	MinSourceDefault          = 64
	DefaultHelloTimeout       = 5 * time.Second
	DefaultMaxHelloBytes      = 64 << 10
	DefaultIdleTimeout        = time.Hour
	DefaultConnectTimeout     = 5 * time.Second
	DefaultMaxConnectAttempts = 3
	DefaultConsecutiveFails   = 5
	DefaultBaseEjectionTime   = 30 * time.Second
	DefaultMaxEjectionTime    = 5 * time.Minute
	DefaultMeshDomain         = "cluster.local"
)

// Relay engines: how bytes move between a client and its upstream once routed.
const (
	RelayAuto       = "auto"       // epoll on Linux, goroutines elsewhere
	RelayEpoll      = "epoll"      // event loops with splice; refused where unsupported
	RelayGoroutines = "goroutines" // two goroutines per connection in io.Copy (splice too)
)

// Relay selects and tunes the relay engine. It is read when the gateway starts; a reload that
// changes it is logged and takes effect at the next restart.
type Relay struct {
	Engine string `yaml:"engine"` // auto (default), epoll or goroutines
	// Loops is the number of epoll event loops; zero: one per CPU the process may use.
	Loops int `yaml:"loops"`
	// PipeSize is the capacity of each splice pipe in bytes; zero: 256 KiB.
	PipeSize int `yaml:"pipe_size"`
}

// Listener is one accepting socket and the route table behind it.
type Listener struct {
	Name    string `yaml:"name"`    // required, unique; clusters refer to it
	Kind    string `yaml:"kind"`    // mesh or ingress
	Address string `yaml:"address"` // host:port; port 0 picks a free port (tests)
	// RequireIstioALPN (mesh only) refuses a client whose ALPN offers none of Istio's mTLS
	// protocols. Nil means true, Istio's AUTO_PASSTHROUGH behaviour.
	RequireIstioALPN *bool `yaml:"require_istio_alpn"`
	// MeshDomains (ingress only) are DNS suffixes of mesh-internal hosts; an SNI under one of them is
	// refused on this listener and no route may name one. Zero: [cluster.local].
	MeshDomains []string `yaml:"mesh_domains"`
	// MaxConnections caps the listener's open connections; excess connections are reset at once.
	// Zero: a share of the open-file limit decided by the gateway (at most 10000); a value the
	// limit cannot hold, with the other listeners' and the reserve, is refused at Apply.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerSource caps the connections one source address (an IPv6 /64) may hold on
	// this listener, counted at accept on the TCP peer, or on the PROXY header's source for a
	// trusted load balancer. Zero: max_connections / 4, but at least 64 (or max_connections).
	MaxConnectionsPerSource int            `yaml:"max_connections_per_source"`
	HelloTimeout            time.Duration  `yaml:"hello_timeout"`   // zero: 5s, for the PROXY header and the whole ClientHello
	MaxHelloBytes           int            `yaml:"max_hello_bytes"` // zero: 65536 (Envoy's TLS inspector's cap)
	IdleTimeout             time.Duration  `yaml:"idle_timeout"`    // zero: 1h without a byte either way
	ProxyProtocol           *ProxyProtocol `yaml:"proxy_protocol"`  // nil: no PROXY protocol
	Routes                  []Route        `yaml:"routes"`          // ingress only
	// RoutesFrom (mesh only) says where the listener's clusters come from: static (the default,
	// the clusters: list) or xds (the xDS client; then no cluster of this file may name the
	// listener). One source per listener, so that nobody has to guess which one wins.
	RoutesFrom string `yaml:"routes_from"`
	// Export (mesh only) is the allow-list of hosts the listener serves, and to which clients.
	// Nil (no export key): every host the route source publishes, Istio's AUTO_PASSTHROUGH.
	// Anything else is refused as not_exported with a TLS access_denied alert.
	Export []ExportRule `yaml:"export"`
}

// ProxyProtocol accepts a PROXY protocol v1/v2 header from trusted peers (a cloud load balancer).
type ProxyProtocol struct {
	// TrustedCIDRs: a connection from one of these must start with a PROXY header, whose source
	// address is then used for logs and maglev; from anywhere else no header is read.
	TrustedCIDRs []string `yaml:"trusted_cidrs"`
}

// Route sends TLS connections whose SNI matches one of Hosts to Cluster (ingress listeners).
type Route struct {
	Hosts   []string `yaml:"hosts"` // exact (app.example.com) or wildcard (*.example.com)
	Cluster string   `yaml:"cluster"`
}

// ClusterConfig is a set of endpoints and how to pick among them (a clusters: entry).
type ClusterConfig struct {
	// Name is the cluster's name. For a mesh cluster it is the Istio SNI that reaches it,
	// outbound_.<port>_.<subset>_.<host>.
	Name               string            `yaml:"name"`
	Listener           string            `yaml:"listener"`             // the listener this cluster serves
	LBPolicy           string            `yaml:"lb_policy"`            // round_robin (default), least_conn, maglev
	ConnectTimeout     time.Duration     `yaml:"connect_timeout"`      // zero: 5s
	MaxConnectAttempts int               `yaml:"max_connect_attempts"` // zero: 3 endpoints tried before giving up
	OutlierDetection   *OutlierDetection `yaml:"outlier_detection"`    // nil: defaults
	Endpoints          []EndpointConfig  `yaml:"endpoints"`
}

// OutlierDetection is passive health checking: connect failures eject an endpoint for a while.
type OutlierDetection struct {
	ConsecutiveFailures int           `yaml:"consecutive_failures"` // zero: 5; negative: never eject
	BaseEjectionTime    time.Duration `yaml:"base_ejection_time"`   // zero: 30s, doubled at each new ejection
	MaxEjectionTime     time.Duration `yaml:"max_ejection_time"`    // zero: 5m
}

// EndpointConfig is one upstream address.
type EndpointConfig struct {
	Address string `yaml:"address"` // host:port
	Weight  uint32 `yaml:"weight"`  // zero: 1
}

// BoolOr returns *b, or def when b is nil.
func BoolOr(b *bool, def bool) bool {
	if b == nil {
		return def
	}
	return *b
}

// SetDefaults fills every zero optional field of the data plane's sections with its default:
// the relay engine, one mesh listener on DefaultMeshAddress when there is none, and each
// listener's and cluster's own defaults. It is the only place these defaults are decided
// (config.File.SetDefaults calls it).
func (c *Config) SetDefaults() {
	field.Default(&c.Relay.Engine, RelayAuto)
	if len(c.Listeners) == 0 {
		c.Listeners = []Listener{{Name: KindMesh, Kind: KindMesh, Address: DefaultMeshAddress}}
	}
	for i := range c.Listeners {
		c.Listeners[i].SetDefaults()
	}
	for i := range c.Clusters {
		c.Clusters[i].SetDefaults()
	}
}

// SetDefaults fills every zero optional field of the listener with its default.
func (l *Listener) SetDefaults() {
	// MaxConnections and MaxConnectionsPerSource stay zero here: their defaults depend on the
	// process's open-file limit and the relay engine, which the gateway resolves at Apply.
	field.Default(&l.HelloTimeout, DefaultHelloTimeout)
	field.Default(&l.MaxHelloBytes, DefaultMaxHelloBytes)
	field.Default(&l.IdleTimeout, DefaultIdleTimeout)
	if l.Kind == KindIngress && len(l.MeshDomains) == 0 {
		l.MeshDomains = []string{DefaultMeshDomain}
	}
	if l.Kind == KindMesh && l.RoutesFrom == "" {
		l.RoutesFrom = RoutesStatic
	}
}

// MeshClusterDefaults returns a cluster of listener with every optional field at its default,
// for clusters that do not come from this file (xDS).
func MeshClusterDefaults(name, listener string) ClusterConfig {
	c := ClusterConfig{Name: name, Listener: listener}
	c.SetDefaults()
	return c
}

// SetDefaults fills every zero optional field of the cluster with its default.
func (c *ClusterConfig) SetDefaults() {
	field.Default(&c.LBPolicy, RoundRobin)
	field.Default(&c.ConnectTimeout, DefaultConnectTimeout)
	field.Default(&c.MaxConnectAttempts, DefaultMaxConnectAttempts)
	if c.OutlierDetection == nil {
		c.OutlierDetection = &OutlierDetection{}
	}
	od := c.OutlierDetection
	field.Default(&od.ConsecutiveFailures, DefaultConsecutiveFails)
	field.Default(&od.BaseEjectionTime, DefaultBaseEjectionTime)
	field.Default(&od.MaxEjectionTime, DefaultMaxEjectionTime)
	for i := range c.Endpoints {
		field.Default(&c.Endpoints[i].Weight, 1)
	}
}

// RoutesFromXDS reports whether the listener takes its routes from the xDS client: a mesh
// listener with routes_from: xds. No cluster of the file may name such a listener.
func (l *Listener) RoutesFromXDS() bool {
	return l.Kind == KindMesh && l.RoutesFrom == RoutesXDS
}

// MeshDomainOf reports the mesh domain that host (an SNI, or a route's pattern) falls under on
// this listener, or "".
func (l *Listener) MeshDomainOf(host string) string {
	host = strings.TrimPrefix(host, "*.")
	for _, d := range l.MeshDomains {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if host == d || strings.HasSuffix(host, "."+d) {
			return d
		}
	}
	return ""
}
