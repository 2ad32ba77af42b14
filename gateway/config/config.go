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
	"github.com/ewgate/ewgate/gateway/config/field"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
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
	DefaultDrainTimeout      = 30 * time.Second
	DefaultWatchInterval     = 2 * time.Second
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
	// Kubernetes is the API server (or, with Clusters, one per cluster) whose WorkloadEntries and
	// WorkloadGroups the registrar and the built-in control plane use (in a mesh). Nil: the file
	// store at control_plane.workload_entries_dir.
	Kubernetes *Kubernetes `yaml:"kubernetes"`
	// WorkloadGroups are the groups VMs may join in standalone mode (metadata + spec, as in
	// Kubernetes, and with a store per cluster the cluster whose store holds it); they are
	// written to the registrar's store at start and on every reload.
	WorkloadGroups []*WorkloadGroup `yaml:"workload_groups"`

	// Warnings are the risky settings Load and Parse found in a valid file (see risk.go): not
	// errors, since a deployment may justify them, but each is worth a log line at start and
	// reload. They carry the file, line and path as errors do. Not a key of the file.
	Warnings field.Errors `yaml:"-"`
}

// Kubernetes says how to reach the API server: one store used for every cluster (Kubeconfig), or
// a store per cluster (Clusters), never both.
type Kubernetes struct {
	// Kubeconfig is a kubeconfig file. Empty: the in-cluster service account.
	Kubeconfig string `yaml:"kubeconfig"`
	// Clusters are a registration store per cluster: a VM's WorkloadEntry is written to the API
	// server of the cluster that vouched for it (its verified cluster, the one that picks its
	// control.upstreams entry), where that cluster's istiod reads it. Empty: one store
	// (Kubeconfig) for every cluster.
	Clusters []KubernetesCluster `yaml:"clusters"`
}

// KubernetesCluster is the API server of one cluster.
type KubernetesCluster struct {
	// Cluster is the cluster of a control.upstreams entry (and of authn issuers). Required, unique.
	Cluster string `yaml:"cluster"`
	// Kubeconfig is that cluster's kubeconfig file. Empty: the in-cluster service account (the
	// cluster ewgate runs in).
	Kubeconfig string `yaml:"kubeconfig"`
}

// WorkloadGroup is one workload_groups item: a WorkloadGroup as in Kubernetes (metadata and
// spec) and the cluster whose store it is written to.
type WorkloadGroup struct {
	// Cluster names the kubernetes.clusters entry whose store holds the group: required with a
	// store per cluster; with one store, optional (and if set, a cluster of control.upstreams).
	Cluster                 string `yaml:"cluster,omitempty"`
	registrar.WorkloadGroup `yaml:",inline"`
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
