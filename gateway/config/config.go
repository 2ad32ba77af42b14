// Package config is ewgate's configuration file: one strict YAML document (unknown keys are errors)
// that names the listeners, the clusters behind them and, as later parts of ewgate land, whom to
// trust and how to register VMs.
//
// Load decodes, fills defaults in one place (SetDefaults) and validates once (Validate); every error
// names the field path and the line it comes from, and says what is allowed:
//
//	f, err := config.Load("ewgate.yaml")
//	if err != nil {
//		// ewgate.yaml:14: listeners[0].address: "15443" is not host:port (for example 127.0.0.1:15443)
//	}
//
// The zero value of every optional field means "the default", documented on the field and in
// docs/config.md.
package config

import (
	"time"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

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

// Log formats.
const (
	LogJSON    = "json"
	LogConsole = "console"
)

// Defaults, resolved by SetDefaults and documented in docs/config.md.
const (
	DefaultAdminAddress      = "127.0.0.1:15000"
	DefaultAdminMaxConns     = 64
	DefaultAdminMaxPerSource = 16
	DefaultMeshAddress       = "127.0.0.1:15443"
	DefaultDrainTimeout      = 30 * time.Second
	DefaultWatchInterval     = 2 * time.Second
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

// File is the whole configuration file.
type File struct {
	Log          Log           `yaml:"log"`
	Admin        Admin         `yaml:"admin"`
	DrainTimeout time.Duration `yaml:"drain_timeout"` // zero: 30s
	Reload       Reload        `yaml:"reload"`
	Relay        Relay         `yaml:"relay"`
	Listeners    []Listener    `yaml:"listeners"` // none: one mesh listener on 127.0.0.1:15443
	Clusters     []Cluster     `yaml:"clusters"`
	// XDS is the gateway's xDS client (routes of routes_from: xds listeners).
	XDS XDS `yaml:"xds"`
	// ControlPlane is the built-in xDS server and CA (standalone mode).
	ControlPlane ControlPlane `yaml:"control_plane"`
	// Services are the mesh services the built-in control plane serves, in ServiceEntry terms.
	Services []Service `yaml:"services"`

	// VM onboarding (docs/vm-onboarding.md); a section left out is off.

	// Authn names whom to trust: token issuers and client-certificate trust bundles.
	Authn *authn.Config `yaml:"authn"`
	// Control is the VM control endpoint (port 15012): TLS, authentication, forwarding.
	Control *vmcontrol.Config `yaml:"control"`
	// Registrar registers VMs that connect with AUTO_REGISTER_GROUP as WorkloadEntries.
	Registrar *registrar.Config `yaml:"registrar"`
	// Kubernetes is the API server whose WorkloadEntries and WorkloadGroups the registrar and the
	// built-in control plane use (in a mesh). Nil: the file store at
	// control_plane.workload_entries_dir.
	Kubernetes *Kubernetes `yaml:"kubernetes"`
	// WorkloadGroups are the groups VMs may join in standalone mode (metadata + spec, as in
	// Kubernetes); they are written to the registrar's store at start and on every reload.
	WorkloadGroups []*registrar.WorkloadGroup `yaml:"workload_groups"`

	// Warnings are the risky settings Load and Parse found in a valid file (see risk.go): not
	// errors, since a deployment may justify them, but each is worth a log line at start and
	// reload. They carry the file, line and path as errors do. Not a key of the file.
	Warnings Errors `yaml:"-"`
}

// Kubernetes says how to reach the API server.
type Kubernetes struct {
	// Kubeconfig is a kubeconfig file. Empty: the in-cluster service account.
	Kubeconfig string `yaml:"kubeconfig"`
}

// Log selects the log encoding and level.
type Log struct {
	Format string `yaml:"format"` // json (default) or console
	Level  string `yaml:"level"`  // debug, info (default), warn, error
}

// Admin is ewgate's HTTP servers for people and machines, split as Istio and Envoy split them:
// the debug admin (Address: every page, on loopback), the status port (StatusAddress:
// readiness only, the one a load balancer may publish) and the metrics port (MetricsAddress:
// /metrics only, on the pod address for Prometheus). Each server closes connections beyond
// MaxConnections, and beyond MaxConnectionsPerSource from one source address.
type Admin struct {
	// Address serves every page: /healthz/ready, /healthz/control, /metrics, /debug/routes,
	// /debug/registrations, /debug/authn and, with Pprof, /debug/pprof/. zero: 127.0.0.1:15000.
	// Keep it on loopback (reach it with kubectl port-forward): the pages show every route,
	// endpoint and registered VM. Anything else is warned about at load.
	Address string `yaml:"address"`
	// Pprof mounts /debug/pprof/ on Address. zero: false.
	Pprof bool `yaml:"pprof"`
	// StatusAddress serves GET /healthz/ready and GET /healthz/control only (404 for anything
	// else): the port probes and load balancers use (Istio's 15021). Empty: no status server.
	StatusAddress string `yaml:"status_address"`
	// MetricsAddress serves GET /metrics only (Istio's 15020). Empty: no metrics server
	// (/metrics stays on Address).
	MetricsAddress string `yaml:"metrics_address"`
	// MaxConnections caps the open connections of each of the three servers; zero: 64.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerSource caps one source address's open connections on each server;
	// zero: 16.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
}

// Reload controls how the file is re-read. SIGHUP always reloads.
type Reload struct {
	// WatchInterval is how often the file's content is checked for a change; zero: 2s; a negative
	// value switches watching off.
	WatchInterval time.Duration `yaml:"watch_interval"`
}

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

// Cluster is a set of endpoints and how to pick among them.
type Cluster struct {
	// Name is the cluster's name. For a mesh cluster it is the Istio SNI that reaches it,
	// outbound_.<port>_.<subset>_.<host>.
	Name               string            `yaml:"name"`
	Listener           string            `yaml:"listener"`             // the listener this cluster serves
	LBPolicy           string            `yaml:"lb_policy"`            // round_robin (default), least_conn, maglev
	ConnectTimeout     time.Duration     `yaml:"connect_timeout"`      // zero: 5s
	MaxConnectAttempts int               `yaml:"max_connect_attempts"` // zero: 3 endpoints tried before giving up
	OutlierDetection   *OutlierDetection `yaml:"outlier_detection"`    // nil: defaults
	Endpoints          []Endpoint        `yaml:"endpoints"`
}

// OutlierDetection is passive health checking: connect failures eject an endpoint for a while.
type OutlierDetection struct {
	ConsecutiveFailures int           `yaml:"consecutive_failures"` // zero: 5; negative: never eject
	BaseEjectionTime    time.Duration `yaml:"base_ejection_time"`   // zero: 30s, doubled at each new ejection
	MaxEjectionTime     time.Duration `yaml:"max_ejection_time"`    // zero: 5m
}

// Endpoint is one upstream address.
type Endpoint struct {
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
