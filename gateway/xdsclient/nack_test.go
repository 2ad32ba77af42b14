package xdsclient_test

import (
	"strings"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/xdsclient"
)

func chain(sni, cluster string) *listenerv3.FilterChain {
	tp, _ := anypb.New(&tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}})
	return &listenerv3.FilterChain{
		FilterChainMatch: &listenerv3.FilterChainMatch{ServerNames: []string{sni}, ApplicationProtocols: []string{"istio"}},
		Filters:          []*listenerv3.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp}}},
	}
}

func sock(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// A control plane that sends one cluster the gateway cannot use (ORIGINAL_DST) and one chain it
// must never route (no server names) next to a good one: the client NACKs with the reason and
// the good route serves.
func TestNACKedResourceLeavesTheRestWorking(t *testing.T) {
	p := testkit.NewCA(t, "test CA")
	badSNI := "outbound_.9080_._.bad.default.svc.cluster.local"
	a := startBackend(t, p, "a", reviewsSNI, badSNI)
	g := startGateway(t)

	var mu sync.Mutex
	nacks := map[string]string{}
	cb := server.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
		if d := r.GetErrorDetail(); d != nil {
			mu.Lock()
			nacks[r.GetTypeUrl()] = d.GetMessage()
			mu.Unlock()
		}
		return nil
	}}
	ads := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	}
	good := &clusterv3.Cluster{Name: reviewsSNI, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads()}}
	bad := &clusterv3.Cluster{Name: badSNI, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}}
	catchAll := chain(reviewsSNI, reviewsSNI)
	catchAll.FilterChainMatch.ServerNames = nil
	l := &listenerv3.Listener{Name: "0.0.0.0_15443", Address: sock("0.0.0.0", 15443),
		FilterChains: []*listenerv3.FilterChain{chain(reviewsSNI, reviewsSNI), chain(badSNI, badSNI), catchAll}}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: reviewsSNI, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock("127.0.0.1", a.port())}}}},
	}}}
	addr := serveSnapshot(t, map[resource.Type][]types.Resource{
		resource.ListenerType: {l}, resource.ClusterType: {good, bad}, resource.EndpointType: {cla},
	}, cb)

	reg := prometheus.NewRegistry()
	c := runClient(t, addr, g, reg)
	testkit.Eventually(t, "ready despite the rejected parts", c.Ready)
	gw := g.Addr("mesh").String()
	testkit.Eventually(t, "good route serves", func() bool { return only(reached(gw, p, reviewsSNI, 1), "a") })
	if _, err := who(gw, p, badSNI); err == nil || !strings.Contains(err.Error(), "unrecognized name") {
		t.Fatalf("the rejected cluster's route: %v; want refused", err)
	}
	testkit.Eventually(t, "NACKs seen by the control plane", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(nacks[resource.ClusterType], "ORIGINAL_DST") && strings.Contains(nacks[resource.ListenerType], "catch-all")
	})
	if v := testkit.Metric(t, reg, "ewgate_xds_pushes_total", map[string]string{"type": "cds", "result": "rejected"}); v < 1 {
		t.Fatalf("cds rejected = %v", v)
	}
	// What /debug/xds, the status page and `ewgate status` show: connected, each type's NACK with
	// its error, and the endpoints ACKed at version 1 (the cds and lds versions stay unACKed).
	st := c.Status()
	if st.Server != addr || !st.Connected || st.ConnectedSince == nil || !st.Ready || st.LastApplied == nil {
		t.Fatalf("status %+v; want connected and ready", st)
	}
	types := map[string]xdsclient.TypeStatus{}
	for _, ts := range st.Types {
		types[ts.Type] = ts
	}
	if cds := types["cds"]; !strings.Contains(cds.NACKError, "ORIGINAL_DST") || cds.LastNACK.IsZero() || cds.Version != "" || cds.Responses < 1 {
		t.Errorf("cds status %+v; want the NACK and its error, no ACKed version", cds)
	}
	if lds := types["lds"]; !strings.Contains(lds.NACKError, "catch-all") || lds.LastNACK.IsZero() {
		t.Errorf("lds status %+v; want the NACK and its error", lds)
	}
	if eds := types["eds"]; eds.Version != "1" || eds.LastACK.IsZero() || eds.NACKError != "" {
		t.Errorf("eds status %+v; want ACKed at version 1", eds)
	}
}
