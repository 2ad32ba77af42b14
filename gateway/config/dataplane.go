package config

import "github.com/ewgate/ewgate/gateway/dataplane"

// The data plane's sections (relay, listeners, clusters) are the data plane's own types: package
// dataplane defines them and their defaults, and never imports this package. The names below let
// the rest of the file's code say Listener rather than dataplane.Listener.

type (
	Relay            = dataplane.Relay
	Listener         = dataplane.Listener
	ProxyProtocol    = dataplane.ProxyProtocol
	ExportRule       = dataplane.ExportRule
	Cluster          = dataplane.ClusterConfig
	OutlierDetection = dataplane.OutlierDetection
)

// Listener kinds, load-balancing policies, route sources and relay engines.
const (
	KindMesh        = dataplane.KindMesh
	KindIngress     = dataplane.KindIngress
	RoundRobin      = dataplane.RoundRobin
	LeastConn       = dataplane.LeastConn
	Maglev          = dataplane.Maglev
	RoutesStatic    = dataplane.RoutesStatic
	RoutesXDS       = dataplane.RoutesXDS
	RelayAuto       = dataplane.RelayAuto
	RelayEpoll      = dataplane.RelayEpoll
	RelayGoroutines = dataplane.RelayGoroutines
)

// Defaults of the data plane's sections (see package dataplane).
const (
	DefaultMeshAddress    = dataplane.DefaultMeshAddress
	DefaultMaxConnections = dataplane.DefaultMaxConnections
	DefaultSourceShare    = dataplane.DefaultSourceShare
	DefaultHelloTimeout   = dataplane.DefaultHelloTimeout
	DefaultMaxHelloBytes  = dataplane.DefaultMaxHelloBytes
	DefaultIdleTimeout    = dataplane.DefaultIdleTimeout
)

// BoolOr returns *b, or def when b is nil.
func BoolOr(b *bool, def bool) bool { return dataplane.BoolOr(b, def) }

// DataPlane returns the sections the data plane serves (they share f's slices; Apply does not
// modify them). FDHolders is left for the caller, who knows the other holders of open files.
func (f *File) DataPlane() *dataplane.Config {
	return &dataplane.Config{Relay: f.Relay, Listeners: f.Listeners, Clusters: f.Clusters}
}
