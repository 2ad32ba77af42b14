package vmcontrol_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/controlplane"
	xdsca "github.com/ewgate/ewgate/gateway/meshca"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const grace = 10 * time.Second

// standalone is ewgate's standalone mode: a front whose only upstream is the built-in control
// plane and CA, and a registrar on a memory store with a fake clock.
type standalone struct {
	p      *pki
	g      *gateway
	store  *registrar.MemoryStore
	clock  *fakeClock
	cp     *controlplane.Server
	cpOpts controlplane.Options
	cpStop func() // stops the running control plane and waits for it
	ca     *xdsca.CA
	cancel context.CancelFunc
	done   chan struct{}
}

func startStandalone(t *testing.T) *standalone {
	t.Helper()
	s := &standalone{p: newPKI(t), store: registrar.NewMemoryStore(), clock: &fakeClock{testkit.NewClock(t0)}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if _, err := s.store.WorkloadGroups().Create(ctx, &registrar.WorkloadGroup{
		ObjectMeta: registrar.ObjectMeta{Name: "web", Namespace: vmNS},
		Spec: registrar.WorkloadGroupSpec{Metadata: registrar.GroupMetadata{Labels: map[string]string{"app": "web"}},
			Template: registrar.WorkloadEntrySpec{Ports: map[string]uint32{"grpc": 8080}, ServiceAccount: vmSA}},
	}); err != nil {
		t.Fatal(err)
	}
	r, err := registrar.New(registrar.Config{Instance: "gw-1", GracePeriod: registrar.Duration(grace)},
		registrar.Options{Store: s.store, Clock: s.clock})
	if err != nil {
		t.Fatal(err)
	}
	if s.ca, err = xdsca.Open(xdsca.Options{DataDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	s.g = startFront(t, s.p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{{Cluster: "c1", Builtin: true}}},
		vmcontrol.Options{Registrar: r})
	f, err := config.Parse([]byte(`services:
  - name: web
    namespace: vm-ns
    hosts: [web.vm-ns.svc.cluster.local]
    ports: [{number: 8080, name: grpc, protocol: GRPC}]
    workload_selector: {labels: {app: web}}
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s.cpOpts = controlplane.Options{Services: f.Services, Entries: s.store.WorkloadEntries(), CA: s.ca,
		ServerOptions: s.g.BuiltinServerOptions(), Debounce: 5 * time.Millisecond, MaxDelay: 50 * time.Millisecond}
	s.startControlPlane()
	go func() { r.Run(ctx); close(s.done) }()
	t.Cleanup(func() { s.g.stop(); s.cpStop(); cancel(); <-s.done })
	return s
}

// startControlPlane runs a (new) built-in control plane on a fresh in-memory listener.
func (s *standalone) startControlPlane() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cp = controlplane.New(s.cpOpts)
	done := make(chan struct{})
	go func() { s.cp.Run(ctx, s.g.BuiltinListener()); close(done) }()
	s.cpStop = func() { cancel(); <-done }
}

func vmNode(group, ip, cluster string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"AUTO_REGISTER_GROUP": group, "INSTANCE_IPS": ip, "NETWORK": "vm-net", "CLUSTER_ID": cluster,
		"NAMESPACE": vmNS, "LABELS": map[string]any{"version": "v1"},
	})
	return &corev3.Node{Id: "sidecar~" + ip + "~vm-1." + vmNS + "~" + vmNS + ".svc.cluster.local", Metadata: md,
		Locality: &corev3.Locality{Region: "r1", Zone: "z1"}}
}

func (s *standalone) entry(t testing.TB, name string) *registrar.WorkloadEntry {
	e, err := s.store.WorkloadEntries().Get(context.Background(), vmNS, name)
	if errors.Is(err, registrar.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (s *standalone) entryCount(t testing.TB) int {
	list, _, err := s.store.WorkloadEntries().List(context.Background(), "", registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// waitGone advances the fake clock past the grace period until the entry is deleted.
func (s *standalone) waitGone(t testing.TB, name string) {
	t.Helper()
	testkit.Eventually(t, "entry "+name+" deleted after the grace period", func() bool {
		s.clock.Advance(time.Second)
		return s.entry(t, name) == nil
	})
}

const entryName = "web-10.0.0.5-vm-net"

func TestBuiltinADSRegistersBeforeTheFirstResponseAndDeregistersAfterGrace(t *testing.T) {
	s := startStandalone(t)
	cc := s.g.dial(t, s.p)
	ctx, cancel := context.WithCancel(withToken(t.Context(), token(t, vmNS, vmSA), "clusterid", "c1"))
	defer cancel()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: vmNode("web", "10.0.0.5", "c1"), TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := ads.Recv()
	if err != nil {
		t.Fatal(err)
	}
	e := s.entry(t, entryName)
	if e == nil {
		t.Fatal("the first response came before the WorkloadEntry existed")
	}
	if e.Annotations[registrar.AnnotationConnectedAt] == "" || e.Spec.Address != "10.0.0.5" || e.Labels["version"] != "v1" {
		t.Fatalf("entry %+v", e)
	}
	var cluster string
	for _, r := range resp.GetResources() {
		if strings.Contains(string(r.GetValue()), "web.vm-ns.svc.cluster.local") {
			cluster = "outbound|8080||web.vm-ns.svc.cluster.local"
		}
	}
	if cluster == "" {
		t.Fatalf("CDS response without the web service: %d resources", len(resp.GetResources()))
	}
	// ACK, then ask for the endpoints: the VM itself is one of them once its entry is pushed.
	ads.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	ads.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{cluster}})
	found := false
	for i := 0; i < 20 && !found; i++ {
		r, err := ads.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range r.GetResources() {
			cla := &endpointv3.ClusterLoadAssignment{}
			if a.UnmarshalTo(cla) == nil && strings.Contains(cla.String(), "10.0.0.5") {
				found = true
			}
		}
		if r.GetTypeUrl() == resourcev3.EndpointType {
			ads.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{cluster}, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
		}
	}
	if !found {
		t.Fatal("the registered VM never appeared in EDS")
	}
	// A health report is applied to the entry, not forwarded.
	ads.Send(&discoveryv3.DiscoveryRequest{TypeUrl: vmcontrol.HealthInfoType})
	testkit.Eventually(t, "Healthy=True on the entry", func() bool {
		c := s.entry(t, entryName).Status.Condition(registrar.ConditionHealthy)
		return c != nil && c.Status == "True"
	})
	cancel()
	testkit.Eventually(t, "disconnectedAt set", func() bool {
		e := s.entry(t, entryName)
		return e != nil && e.Annotations[registrar.AnnotationDisconnectedAt] != ""
	})
	s.waitGone(t, entryName)
}

func TestBuiltinDeltaADS(t *testing.T) {
	s := startStandalone(t)
	cc := s.g.dial(t, s.p)
	ctx := withToken(t.Context(), token(t, vmNS, vmSA))
	d, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discoveryv3.DeltaDiscoveryRequest{Node: vmNode("web", "10.0.0.5", "c1"), TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := d.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) == 0 || s.entry(t, entryName) == nil {
		t.Fatalf("delta: %d resources, entry %v", len(resp.GetResources()), s.entry(t, entryName) != nil)
	}
}

func TestBuiltinCASignsForTheVerifiedCaller(t *testing.T) {
	s := startStandalone(t)
	cc := s.g.dial(t, s.p)
	csr, _ := testkit.CSR(t, "spiffe://cluster.local/ns/istio-system/sa/istiod") // asks for somebody else
	client := securityv1alpha1.NewIstioCertificateServiceClient(cc)
	resp, err := client.CreateCertificate(withToken(t.Context(), token(t, vmNS, vmSA), "clusterid", "c1"),
		&securityv1alpha1.IstioCertificateRequest{Csr: csr, ValidityDuration: 3600})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode([]byte(resp.GetCertChain()[0]))
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/vm-ns/sa/web" {
		t.Fatalf("signed for %v", leaf.URIs)
	}
	// The issued certificate is itself a credential the front accepts (the mesh root is the CA's).
	if _, err := client.CreateCertificate(t.Context(), &securityv1alpha1.IstioCertificateRequest{Csr: csr}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no credential: %v", err)
	}
}

func TestBuiltinRefusals(t *testing.T) {
	s := startStandalone(t)
	cc := s.g.dial(t, s.p)
	cases := []struct {
		name, group, cluster, sa string
		code                     codes.Code
		msg                      string
	}{
		{"no such group", "nope", "c1", vmSA, codes.FailedPrecondition, "WorkloadGroup"},
		{"node cluster mismatch", "web", "c2", vmSA, codes.PermissionDenied, "CLUSTER_ID"},
		{"service account not the group's", "web", "c1", "intruder", codes.PermissionDenied, "may not join"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(withToken(t.Context(), token(t, vmNS, tc.sa)))
			if err != nil {
				t.Fatal(err)
			}
			ads.Send(&discoveryv3.DiscoveryRequest{Node: vmNode(tc.group, "10.0.0.9", tc.cluster), TypeUrl: resourcev3.ClusterType})
			_, err = ads.Recv()
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.code, tc.msg)
			}
		})
	}
	if n := s.entryCount(t); n != 0 {
		t.Fatalf("%d entries written for refused VMs", n)
	}
}
