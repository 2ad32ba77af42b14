package xdsclient_test

import (
	"context"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewgate/ewgate/gateway/controlplane"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

// EDS health statuses as Envoy uses them for load balancing: HEALTHY and UNKNOWN (istiod leaves
// the field unset for ready endpoints) are used; UNHEALTHY (a not-ready pod, when istiod sends
// unhealthy endpoints: PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS), DRAINING, TIMEOUT and DEGRADED are
// not.
func TestEDSHealthStatusesHonoured(t *testing.T) {
	p := testkit.NewCA(t, "test CA")
	statuses := []struct {
		name string
		hs   corev3.HealthStatus
		used bool
	}{
		{"healthy", corev3.HealthStatus_HEALTHY, true},
		{"unknown", corev3.HealthStatus_UNKNOWN, true},
		{"unhealthy", corev3.HealthStatus_UNHEALTHY, false},
		{"draining", corev3.HealthStatus_DRAINING, false},
		{"timeout", corev3.HealthStatus_TIMEOUT, false},
		{"degraded", corev3.HealthStatus_DEGRADED, false},
	}
	var lbs []*endpointv3.LbEndpoint
	var want []string
	for _, s := range statuses {
		b := startBackend(t, p, s.name, reviewsSNI)
		lbs = append(lbs, &endpointv3.LbEndpoint{HealthStatus: s.hs,
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock("127.0.0.1", b.port())}}})
		if s.used {
			want = append(want, s.name)
		}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: reviewsSNI, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}}
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	c := &clusterv3.Cluster{Name: reviewsSNI, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads}}
	l := &listenerv3.Listener{Name: "0.0.0.0_15443", Address: sock("0.0.0.0", 15443),
		FilterChains: []*listenerv3.FilterChain{chain(reviewsSNI, reviewsSNI)}}
	addr := serveSnapshot(t, map[resource.Type][]types.Resource{
		resource.ListenerType: {l}, resource.ClusterType: {c}, resource.EndpointType: {cla},
	}, nil)

	g := startGateway(t)
	cl := runClient(t, addr, g, prometheus.NewRegistry())
	testkit.Eventually(t, "client ready", cl.Ready)
	gw := g.Addr("mesh").String()
	// 40 connections over two usable endpoints: each is reached, nothing else is.
	if got := reached(gw, p, reviewsSNI, 40); !only(got, want...) {
		t.Fatalf("reached %v; want only %v", got, want)
	}
}

// The built-in control plane uses an entry with proxy.istio.io/health-checks-enabled only while
// its Healthy condition is True (none yet counts as not healthy, as istiod does); an entry
// without the annotation is used whatever its conditions say.
func TestBuiltinControlPlaneFollowsEntryHealth(t *testing.T) {
	p := testkit.NewCA(t, "test CA")
	a := startBackend(t, p, "a", reviewsSNI)
	b := startBackend(t, p, "b", reviewsSNI)
	entries := registrar.NewMemoryStore().WorkloadEntries()
	ctx := context.Background()
	g := startGateway(t)
	ln := listen(t, "127.0.0.1:0")
	runCP(t, ln, controlplane.Options{Services: reviewsService(), Entries: entries})
	cl := runClient(t, ln.Addr().String(), g, prometheus.NewRegistry())
	testkit.Eventually(t, "client ready", cl.Ready)
	gw := g.Addr("mesh").String()

	labels := map[string]string{"app": "reviews"}
	checked := entry("checked", "127.0.0.1", a.port(), labels)
	checked.Annotations = map[string]string{"proxy.istio.io/health-checks-enabled": "true"}
	if _, err := entries.Create(ctx, checked); err != nil {
		t.Fatal(err)
	}
	plain := entry("plain", "127.0.0.1", b.port(), labels)
	if _, err := entries.Create(ctx, plain); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the checked entry unused before its first report", func() bool { return only(reached(gw, p, reviewsSNI, 8), "b") })

	setHealthy := func(name, status string) {
		t.Helper()
		e, err := entries.Get(ctx, "default", name)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UTC()
		e.Status.Conditions = []registrar.Condition{{Type: registrar.ConditionHealthy, Status: status, LastProbeTime: now, LastTransitionTime: now}}
		if _, err := entries.UpdateStatus(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	setHealthy("checked", "True")
	testkit.Eventually(t, "the checked entry used once healthy", func() bool { return only(reached(gw, p, reviewsSNI, 8), "a", "b") })
	setHealthy("checked", "False")
	setHealthy("plain", "False") // no annotation: the condition is not the control plane's business
	testkit.Eventually(t, "the checked entry unused once unhealthy", func() bool { return only(reached(gw, p, reviewsSNI, 8), "b") })
	setHealthy("checked", "True")
	testkit.Eventually(t, "the checked entry used again", func() bool { return only(reached(gw, p, reviewsSNI, 8), "a", "b") })
}
