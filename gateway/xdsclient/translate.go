package xdsclient

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/sni"
)

// Type URLs of the resources the client subscribes to.
const (
	typeListener = "type.googleapis.com/envoy.config.listener.v3.Listener"
	typeCluster  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeEndpoint = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// route is one usable filter chain of the mesh listener: a server name to a cluster.
type route struct {
	serverName string
	cluster    string
	alpn       []string
}

// decodeListener unpacks a listener. If it listens on meshPort it also returns its routes; a
// chain that cannot be used is left out and named in the error (the rest still serve).
func decodeListener(a *anypb.Any, meshPort uint32) (*listenerv3.Listener, []route, error) {
	l := &listenerv3.Listener{}
	if err := a.UnmarshalTo(l); err != nil {
		return nil, nil, fmt.Errorf("listener: %w", err)
	}
	if l.GetName() == "" {
		return nil, nil, errors.New("listener without a name")
	}
	if l.GetAddress().GetSocketAddress().GetPortValue() != meshPort {
		return l, nil, nil
	}
	var routes []route
	var errs []error
	for i, fc := range l.GetFilterChains() {
		rs, err := chainRoutes(fc)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s: filter chain %d (%s): %w", l.GetName(), i, fc.GetName(), err))
			continue
		}
		routes = append(routes, rs...)
	}
	if l.GetDefaultFilterChain() != nil {
		// The hole Istio closed in 2021 (docs/xds.md): a catch-all chain would route any SNI. Never.
		errs = append(errs, fmt.Errorf("listener %s: a default filter chain is never routed", l.GetName()))
	}
	return l, routes, errors.Join(errs...)
}

func chainRoutes(fc *listenerv3.FilterChain) ([]route, error) {
	m := fc.GetFilterChainMatch()
	if len(m.GetServerNames()) == 0 {
		return nil, errors.New("no server_names: a catch-all chain is never routed")
	}
	var cluster string
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		if tc == nil || !strings.HasSuffix(tc.GetTypeUrl(), "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy") {
			continue
		}
		tp := &tcpproxyv3.TcpProxy{}
		if err := tc.UnmarshalTo(tp); err != nil {
			return nil, fmt.Errorf("tcp_proxy: %w", err)
		}
		cluster = tp.GetCluster()
		if cluster == "" {
			return nil, errors.New("tcp_proxy without a single cluster (weighted clusters are not supported)")
		}
	}
	if cluster == "" {
		return nil, errors.New("no tcp_proxy filter")
	}
	var routes []route
	for _, n := range m.GetServerNames() {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if in, err := sni.ParseIstioName(n); err != nil || in.Direction != sni.Outbound {
			return nil, fmt.Errorf("server name %q is not an Istio outbound_ name", n)
		}
		routes = append(routes, route{serverName: n, cluster: cluster, alpn: m.GetApplicationProtocols()})
	}
	return routes, nil
}

// decodeCluster unpacks a cluster and refuses the kinds the gateway cannot serve.
func decodeCluster(a *anypb.Any) (*clusterv3.Cluster, error) {
	c := &clusterv3.Cluster{}
	if err := a.UnmarshalTo(c); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if c.GetName() == "" {
		return nil, errors.New("cluster without a name")
	}
	if c.GetClusterType() != nil {
		return nil, fmt.Errorf("cluster %s: custom cluster type %q is not supported", c.GetName(), c.GetClusterType().GetName())
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS, clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
	default:
		return nil, fmt.Errorf("cluster %s: discovery type %s is not supported", c.GetName(), c.GetType())
	}
	return c, nil
}

// edsName is the name under which a cluster's endpoints are published, or "" when the
// cluster carries its own.
func edsName(c *clusterv3.Cluster) string {
	if c.GetType() != clusterv3.Cluster_EDS {
		return ""
	}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

func decodeEndpoints(a *anypb.Any) (*endpointv3.ClusterLoadAssignment, error) {
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := a.UnmarshalTo(cla); err != nil {
		return nil, fmt.Errorf("endpoints: %w", err)
	}
	if cla.GetClusterName() == "" {
		return nil, errors.New("endpoints without a cluster name")
	}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil || sa.GetAddress() == "" || sa.GetPortValue() == 0 {
				return nil, fmt.Errorf("endpoints of %s: an endpoint without an address and port", cla.GetClusterName())
			}
		}
	}
	return cla, nil
}

// endpointSpecs lists the usable endpoints of a load assignment: healthy or unknown ones.
func endpointSpecs(cla *endpointv3.ClusterLoadAssignment) []dataplane.EndpointSpec {
	var out []dataplane.EndpointSpec
	for _, l := range cla.GetEndpoints() {
		loc := l.GetLocality()
		locality := strings.TrimRight(strings.Join([]string{loc.GetRegion(), loc.GetZone(), loc.GetSubZone()}, "/"), "/")
		for _, e := range l.GetLbEndpoints() {
			switch e.GetHealthStatus() {
			case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
			default:
				continue
			}
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			network := e.GetMetadata().GetFilterMetadata()["istio"].GetFields()["network"].GetStringValue()
			out = append(out, dataplane.EndpointSpec{
				Address:        net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))),
				Weight:         e.GetLoadBalancingWeight().GetValue(),
				Locality:       locality,
				Network:        network,
				Priority:       l.GetPriority(),
				LocalityWeight: l.GetLoadBalancingWeight().GetValue(),
			})
		}
	}
	return out
}

// overprovisioning is the load assignment's overprovisioning factor in percent (zero: the data
// plane's default, Envoy's 140).
func overprovisioning(cla *endpointv3.ClusterLoadAssignment) uint32 {
	return cla.GetPolicy().GetOverprovisioningFactor().GetValue()
}

// localityWeighted reports whether the cluster asks for locality-weighted balancing; without it
// Envoy ignores the localities' weights, and so does the gateway.
func localityWeighted(c *clusterv3.Cluster) bool {
	return c.GetCommonLbConfig().GetLocalityWeightedLbConfig() != nil
}

// outlierDetection is the cluster's outlier detection as the gateway applies it: a TCP connect
// failure is a local-origin error, which Envoy (without split_external_local_origin_errors)
// counts as a 5xx and a gateway failure, so the smaller of the enforced consecutive_5xx
// (Envoy's default 5, enforced unless enforcing_consecutive_5xx is 0) and consecutive_gateway_
// failure (enforced only when enforcing_consecutive_gateway_failure says so) ejects. Nil when
// the cluster has none (a DestinationRule without outlierDetection): the gateway's defaults.
// interval and max_ejection_percent are not used: an ejection ends exactly when its time is up.
func outlierDetection(c *clusterv3.Cluster) *dataplane.OutlierDetection {
	od := c.GetOutlierDetection()
	if od == nil {
		return nil
	}
	var n uint32
	if e := od.GetEnforcingConsecutive_5Xx(); e == nil || e.GetValue() > 0 {
		n = 5
		if v := od.GetConsecutive_5Xx(); v != nil {
			n = v.GetValue()
		}
	}
	if od.GetEnforcingConsecutiveGatewayFailure().GetValue() > 0 {
		g := uint32(5)
		if v := od.GetConsecutiveGatewayFailure(); v != nil {
			g = v.GetValue()
		}
		if g > 0 && (n == 0 || g < n) {
			n = g
		}
	}
	out := &dataplane.OutlierDetection{ConsecutiveFailures: int(n)}
	if n == 0 {
		out.ConsecutiveFailures = -1 // never eject
	}
	if d := od.GetBaseEjectionTime(); d != nil {
		out.BaseEjectionTime = d.AsDuration()
	}
	if d := od.GetMaxEjectionTime(); d != nil {
		out.MaxEjectionTime = d.AsDuration()
	}
	return out
}

func lbPolicy(c *clusterv3.Cluster) string {
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_LEAST_REQUEST:
		return config.LeastConn
	case clusterv3.Cluster_MAGLEV, clusterv3.Cluster_RING_HASH:
		return config.Maglev
	default:
		return config.RoundRobin
	}
}

// meshListener picks the listener of meshPort among the accepted ones: istiod's
// 0.0.0.0_<port> first, else the first by name.
func meshListener(ls map[string]*accepted[*listenerv3.Listener], meshPort uint32) *accepted[*listenerv3.Listener] {
	want := fmt.Sprintf("0.0.0.0_%d", meshPort)
	if l := ls[want]; l != nil {
		return l
	}
	var names []string
	for n, l := range ls {
		if l.msg.GetAddress().GetSocketAddress().GetPortValue() == meshPort {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return nil
	}
	sort.Strings(names)
	return ls[names[0]]
}

func connectTimeout(c *clusterv3.Cluster) time.Duration {
	if d := c.GetConnectTimeout(); d != nil {
		return d.AsDuration()
	}
	return 0
}
