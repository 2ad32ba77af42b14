package vmcontrol

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

// healthReport reads pilot-agent's HealthInformation requests as the agent builds them
// (istio-agent's xds_proxy.go: a SotW and a Delta request with the type URL, the probe's error
// in error_detail when unhealthy, code 13), and nothing else.
func TestHealthReportReadsTheAgentsRequests(t *testing.T) {
	unhealthy := &statuspb.Status{Code: 13, Message: `Get "http://10.0.0.5:8080/ready": connection refused`}
	node := &corev3.Node{Id: "sidecar~10.0.0.5~vm.ns~ns.svc.cluster.local"}
	cases := []struct {
		name    string
		method  string
		msg     proto.Message
		isH, ok bool
		message string
	}{
		{"sotw healthy", MethodADS, &discoveryv3.DiscoveryRequest{TypeUrl: HealthInfoType}, true, true, ""},
		{"sotw unhealthy", MethodADS, &discoveryv3.DiscoveryRequest{TypeUrl: HealthInfoType, ErrorDetail: unhealthy, Node: node}, true, false, unhealthy.Message},
		{"delta healthy", MethodDeltaADS, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: HealthInfoType}, true, true, ""},
		{"delta unhealthy", MethodDeltaADS, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: HealthInfoType, ErrorDetail: unhealthy, ResponseNonce: "n1"}, true, false, unhealthy.Message},
		{"sotw NACK of LDS", MethodADS, &discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener", ErrorDetail: unhealthy}, false, false, ""},
		{"delta CDS", MethodDeltaADS, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"}, false, false, ""},
	}
	for _, c := range cases {
		b, err := proto.Marshal(c.msg)
		if err != nil {
			t.Fatal(err)
		}
		isH, ok, msg := healthReport(c.method, b)
		if isH != c.isH || ok != c.ok || msg != c.message {
			t.Errorf("%s: healthReport = (%v, %v, %q); want (%v, %v, %q)", c.name, isH, ok, msg, c.isH, c.ok, c.message)
		}
	}
}
