package controlplane

import (
	"fmt"
	"sort"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/sni"
)

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

// edsCluster is an EDS cluster with no upstream TLS: for the gateway the bytes are the
// sidecars' own mTLS; for proxyless gRPC plaintext (a VM's agent adds its own security).
func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(5 * time.Second),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
	}
}

// loadAssignment groups endpoints by locality. Each locality gets a weight of at least 1: a
// grpc-go client drops a locality without one ("no targets to pick from"). With the client's
// own locality (from), each locality gets its priority by closeness to it. lbs, when not nil,
// are the endpoints' messages already built (lbEndpoint), index for index: the two views share
// them (a message is never changed once built).
func loadAssignment(cluster string, eps []endpoint, lbs []*endpointv3.LbEndpoint, from string) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	byLoc := map[string]*endpointv3.LocalityLbEndpoints{}
	var order []string
	for i, e := range eps {
		l := byLoc[e.locality]
		if l == nil {
			l = &endpointv3.LocalityLbEndpoints{Locality: locality(e.locality), LoadBalancingWeight: wrapperspb.UInt32(0)}
			byLoc[e.locality] = l
			order = append(order, e.locality)
		}
		if lbs != nil {
			l.LbEndpoints = append(l.LbEndpoints, lbs[i])
		} else {
			l.LbEndpoints = append(l.LbEndpoints, lbEndpoint(e))
		}
		l.LoadBalancingWeight.Value += e.weight
	}
	sort.Strings(order)
	for _, k := range order {
		cla.Endpoints = append(cla.Endpoints, byLoc[k])
	}
	if from != "" {
		assignPriorities(cla.Endpoints, locality(from))
	}
	return cla
}

func lbEndpoint(e endpoint) *endpointv3.LbEndpoint {
	lb := &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(e.host, e.port),
		}},
		HealthStatus:        corev3.HealthStatus_HEALTHY,
		LoadBalancingWeight: wrapperspb.UInt32(e.weight),
	}
	if e.network != "" {
		lb.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			"istio": {Fields: map[string]*structpb.Value{"network": structpb.NewStringValue(e.network)}},
		}}
	}
	return lb
}

// localityPriority is istiod's default locality failover (a DestinationRule with
// localityLbSetting enabled and no failover list): 0 for the same region, zone and sub-zone,
// 1 for the same region and zone, 2 for the same region, 3 for any other.
func localityPriority(l, from *corev3.Locality) uint32 {
	switch {
	case l.GetRegion() != from.GetRegion():
		return 3
	case l.GetZone() != from.GetZone():
		return 2
	case l.GetSubZone() != from.GetSubZone():
		return 1
	}
	return 0
}

// assignPriorities gives each locality its priority, then makes the priorities consecutive
// from 0 (Envoy requires it; istiod compacts them the same way).
func assignPriorities(ls []*endpointv3.LocalityLbEndpoints, from *corev3.Locality) {
	var used [4]bool
	for _, l := range ls {
		used[localityPriority(l.GetLocality(), from)] = true
	}
	var compact [4]uint32
	n := uint32(0)
	for p, u := range used {
		compact[p] = n
		if u {
			n++
		}
	}
	for _, l := range ls {
		l.Priority = compact[localityPriority(l.GetLocality(), from)]
	}
}

func locality(s string) *corev3.Locality {
	parts := strings.SplitN(s, "/", 3)
	l := &corev3.Locality{Region: parts[0]}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.SubZone = parts[2]
	}
	return l
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only our own well-formed messages are wrapped
	}
	return a
}

// passthroughChain is istiod's AUTO_PASSTHROUGH chain: SNI = the cluster name, Istio ALPNs,
// tcp_proxy to the cluster of that name.
func passthroughChain(cluster string) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{
		Name: cluster,
		FilterChainMatch: &listenerv3.FilterChainMatch{
			ServerNames:          []string{cluster},
			TransportProtocol:    "tls",
			ApplicationProtocols: append([]string(nil), sni.IstioALPNs...),
		},
		Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
				StatPrefix:       cluster,
				ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
			})},
		}},
	}
}

// meshListener is the gateway's 0.0.0.0_<port> listener.
func meshListener(port uint32, chains []*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    fmt.Sprintf("0.0.0.0_%d", port),
		Address: socketAddress("0.0.0.0", port),
		ListenerFilters: []*listenerv3.ListenerFilter{{
			Name:       "envoy.filters.listener.tls_inspector",
			ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})},
		}},
		FilterChains:     chains,
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}
}

// apiListener is what a proxyless gRPC client resolves xds:///<name> to: an HTTP connection
// manager whose routes come over RDS under the same name.
func apiListener(name string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: name,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(hcm)}}
}

func routeConfig(name, host, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: []string{name, host, "*"},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: ""}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
			}},
		}},
	}
}
