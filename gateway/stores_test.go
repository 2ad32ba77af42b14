package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

// istiodB stands for cluster-b's istiod: a gRPC server on loopback, TLS with a certificate of
// the test CA, answering each ADS request with a response and recording the nodes it saw.
type istiodB struct {
	addr  string
	mu    sync.Mutex
	nodes []string
}

func startIstiodB(t *testing.T, ca *testkit.Cert, name string) *istiodB {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &istiodB{addr: ln.Addr().String()}
	cert := ca.Server(t, name).TLS()
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			for {
				req := &discoveryv3.DiscoveryRequest{}
				if err := ss.RecvMsg(req); err != nil {
					return nil
				}
				if id := req.GetNode().GetId(); id != "" {
					u.mu.Lock()
					u.nodes = append(u.nodes, id)
					u.mu.Unlock()
				}
				if err := ss.SendMsg(&discoveryv3.DiscoveryResponse{TypeUrl: req.GetTypeUrl(), VersionInfo: "b-1", Nonce: "b"}); err != nil {
					return nil
				}
			}
		}))
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return u
}

func (u *istiodB) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.nodes...)
}

// twoClusters is a gateway fronting cluster-a (the built-in control plane) and cluster-b (its
// own istiod, b), with a registration store per cluster: stores["a.kubeconfig"] and
// stores["b.kubeconfig"] stand in for the API servers.
type twoClusters struct {
	g                *Gateway
	b                *istiodB
	issuerA, issuerB *testkit.Issuer
	ca               *testkit.Cert
	logs             *observer.ObservedLogs
	path, yaml       string // the config file, and what it holds at start
}

func startTwoClusters(t *testing.T, stores map[string]registrar.Store) *twoClusters {
	t.Helper()
	var opened []string
	tc := startTwoClustersOpen(t, func(kubeconfig string) (registrar.Store, error) {
		opened = append(opened, kubeconfig)
		return stores[kubeconfig], nil
	})
	if fmt.Sprint(opened) != "[a.kubeconfig b.kubeconfig]" {
		t.Fatalf("stores opened: %v; want one per cluster", opened)
	}
	return tc
}

// startTwoClustersOpen starts the gateway of startTwoClusters with open standing in for the
// opening of each API server's store (by the base name of its kubeconfig).
func startTwoClustersOpen(t *testing.T, open func(kubeconfig string) (registrar.Store, error)) *twoClusters {
	t.Helper()
	tc, err := tryTwoClusters(t, open)
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// tryTwoClusters is startTwoClustersOpen returning Start's error.
func tryTwoClusters(t *testing.T, open func(kubeconfig string) (registrar.Store, error)) (*twoClusters, error) {
	t.Helper()
	dir := t.TempDir()
	issuerA, issuerB := testkit.NewIssuer(t, "https://a.test"), testkit.NewIssuer(t, "https://b.test")
	ca := testkit.NewCA(t, "15012 test CA")
	certFile, keyFile := ca.Server(t, serverName).WriteFiles(t, dir, "tls")
	caFile := testkit.WriteFile(t, dir, "ca.pem", ca.PEM())
	b := startIstiodB(t, ca, "istiod.cluster-b.test")
	y := fmt.Sprintf(`
listeners:
  - {name: mesh, kind: mesh, address: 127.0.0.1:0}
control_plane:
  address: 127.0.0.1:0
  ca: {data_dir: %[1]s/ca}
authn:
  issuers:
    - {issuer: https://a.test, cluster: cluster-a, jwks: '%[2]s'}
    - {issuer: https://b.test, cluster: cluster-b, jwks: '%[3]s'}
control:
  address: 127.0.0.1:0
  tls: {cert_file: %[4]s, key_file: %[5]s}
  upstreams:
    - {cluster: cluster-a, builtin: true}
    - {cluster: cluster-b, address: '%[6]s', ca_file: %[7]s, server_name: istiod.cluster-b.test}
registrar: {instance: ewgate-test}
kubernetes:
  clusters:
    - {cluster: cluster-a, kubeconfig: %[1]s/a.kubeconfig}
    - {cluster: cluster-b, kubeconfig: %[1]s/b.kubeconfig}
workload_groups:
  - cluster: cluster-a
    metadata: {name: web, namespace: vms}
    spec: {metadata: {labels: {app: web}}, template: {serviceAccount: web}}
  - cluster: cluster-b
    metadata: {name: web, namespace: vms}
    spec: {template: {serviceAccount: web}}
  - cluster: cluster-b
    metadata: {name: db, namespace: vms}
    spec: {template: {serviceAccount: db}}
services:
  - {name: web, namespace: vms, hosts: [web.vms.svc.cluster.local], ports: [{number: 8080, name: http, protocol: TLS}], workload_selector: {labels: {app: web}}}
`, dir, issuerA.JWKS(t), issuerB.JWKS(t), certFile, keyFile, b.addr, caFile)
	path := testkit.WriteFile(t, dir, "ewgate.yaml", []byte(y))
	cfg, err := config.Parse([]byte(y), path)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	g, err := Start(cfg, Options{Logger: zap.New(core), Version: "test", Path: path,
		openKube: func(_ context.Context, kubeconfig, _ string, _ *zap.Logger) (registrar.Store, func(), error) {
			st, err := open(filepath.Base(kubeconfig))
			if err != nil {
				return nil, nil, err
			}
			return st, func() {}, nil
		}})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := g.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return &twoClusters{g: g, b: b, issuerA: issuerA, issuerB: issuerB, ca: ca, logs: logs, path: path, yaml: y}, nil
}

// register opens the ADS stream of a VM of cluster at ip through the control endpoint, as
// pilot-agent with AUTO_REGISTER_GROUP does, and returns the error of its first response.
func (tc *twoClusters) register(t *testing.T, iss *testkit.Issuer, cluster, ip string) error {
	t.Helper()
	cc, err := grpc.NewClient(listening(t, tc.logs, "control"), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: tc.ca.Pool(), ServerName: serverName})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	asVM := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+iss.Token(t, "vms", "web"), "ClusterID", cluster)
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(asVM)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": cluster, "NAMESPACE": "vms", "AUTO_REGISTER_GROUP": "web", "INSTANCE_IPS": ip})
	node := &corev3.Node{Id: "sidecar~" + ip + "~web.vms~vms.svc.cluster.local", Metadata: md}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	_, err = ads.Recv()
	return err
}

// TestStorePerCluster: one gateway fronting cluster-a (the built-in control plane) and
// cluster-b (its own istiod), with a registration store per cluster (kubernetes.clusters; the
// Kubernetes stores are memory stores here, there is no API server in this module). Each store
// gets its cluster's workload groups; a VM of cluster-b is registered in b's store only and its
// stream goes to b's istiod, a VM of cluster-a in a's store only; both registrars' metrics live
// on the gateway's one registry, told apart by their cluster label; /debug/registrations lists
// both VMs with their cluster.
func TestStorePerCluster(t *testing.T) {
	storeA, storeB := registrar.NewMemoryStore(), registrar.NewMemoryStore()
	tc := startTwoClusters(t, map[string]registrar.Store{"a.kubeconfig": storeA, "b.kubeconfig": storeB})
	g, b, issuerA, issuerB := tc.g, tc.b, tc.issuerA, tc.issuerB
	h := g.handler()
	testkit.Eventually(t, "ready", func() bool { return get(h, "/healthz/ready") == 200 && get(h, "/healthz/control") == 200 })
	if a, bb := names(t, storeA), names(t, storeB); a != "[web]" || bb != "[db web]" {
		t.Fatalf("groups in a's store %s, in b's %s; want [web] and [db web]", a, bb)
	}

	register := func(iss *testkit.Issuer, cluster, ip string) {
		t.Helper()
		if err := tc.register(t, iss, cluster, ip); err != nil {
			t.Fatalf("VM of %s: first ADS response: %v", cluster, err)
		}
	}
	entries := func(s *registrar.MemoryStore) string {
		list, _, err := s.WorkloadEntries().List(t.Context(), "vms", registrar.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var addrs []string
		for _, e := range list {
			addrs = append(addrs, e.Spec.Address)
		}
		return fmt.Sprint(addrs)
	}

	register(issuerB, "cluster-b", "10.0.2.1")
	if a, bb := entries(storeA), entries(storeB); a != "[]" || bb != "[10.0.2.1]" {
		t.Fatalf("after the VM of cluster-b: entries in a's store %s, in b's %s; want none in a, 10.0.2.1 in b", a, bb)
	}
	if seen := b.seen(); len(seen) != 1 {
		t.Fatalf("cluster-b's istiod saw nodes %v; want the VM of cluster-b", seen)
	}
	register(issuerA, "cluster-a", "10.0.1.1")
	if a, bb := entries(storeA), entries(storeB); a != "[10.0.1.1]" || bb != "[10.0.2.1]" {
		t.Fatalf("after the VM of cluster-a: entries in a's store %s, in b's %s; want 10.0.1.1 in a, 10.0.2.1 in b", a, bb)
	}
	if seen := b.seen(); len(seen) != 1 {
		t.Fatalf("cluster-b's istiod saw nodes %v; the VM of cluster-a went to the built-in control plane", seen)
	}

	for _, c := range []string{"cluster-a", "cluster-b"} {
		if n := testkit.Metric(t, g.reg, "ewgate_registrar_registrations_total", map[string]string{"cluster": c}); n != 1 {
			t.Errorf("ewgate_registrar_registrations_total{cluster=%q} = %v, want 1", c, n)
		}
		if n := testkit.Metric(t, g.reg, "ewgate_registrar_entries_owned", map[string]string{"cluster": c}); n != 1 {
			t.Errorf("ewgate_registrar_entries_owned{cluster=%q} = %v, want 1", c, n)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/registrations", nil))
	var regs []registrar.Registration
	if err := json.Unmarshal(rec.Body.Bytes(), &regs); err != nil {
		t.Fatalf("/debug/registrations: %v: %s", err, rec.Body)
	}
	got := map[string]string{}
	for _, r := range regs {
		got[r.Cluster] = r.Address
	}
	if len(regs) != 2 || got["cluster-a"] != "10.0.1.1" || got["cluster-b"] != "10.0.2.1" {
		t.Fatalf("/debug/registrations: %s; want both VMs, each with its cluster", rec.Body)
	}
}

// downGroups is a memory store whose WorkloadGroup writes fail while down is set, as an API
// server out of reach refuses them.
type downGroups struct {
	*registrar.MemoryStore
	down *atomic.Bool
}

type downGroupRes struct {
	registrar.Resource[*registrar.WorkloadGroup]
	down *atomic.Bool
}

func (s downGroups) WorkloadGroups() registrar.Resource[*registrar.WorkloadGroup] {
	return downGroupRes{s.MemoryStore.WorkloadGroups(), s.down}
}

func (r downGroupRes) Create(ctx context.Context, g *registrar.WorkloadGroup) (*registrar.WorkloadGroup, error) {
	if r.down.Load() {
		return nil, errors.New("test: the API server is out of reach")
	}
	return r.Resource.Create(ctx, g)
}

// TestStorePerClusterHealth: the VM side is degraded while any cluster's store refuses its
// workload groups, even when another cluster's store took its own after it (one flag for every
// store said ready then), and recovers when that store takes them.
func TestStorePerClusterHealth(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	storeA := downGroups{registrar.NewMemoryStore(), &down}
	tc := startTwoClusters(t, map[string]registrar.Store{"a.kubeconfig": storeA, "b.kubeconfig": registrar.NewMemoryStore()})
	h := tc.g.handler()
	testkit.Eventually(t, "ready", func() bool { return get(h, "/healthz/ready") == 200 })
	if code := get(h, "/healthz/control"); code != 503 {
		t.Fatalf("/healthz/control: %d with cluster-a's store refusing its groups; want 503", code)
	}
	if n := testkit.Metric(t, tc.g.reg, "ewgate_control_ready", nil); n != 0 {
		t.Fatalf("ewgate_control_ready = %v with cluster-a's store refusing its groups; want 0", n)
	}
	down.Store(false)
	testkit.Eventually(t, "recovered", func() bool { return get(h, "/healthz/control") == 200 })
	if list, _, err := storeA.MemoryStore.WorkloadGroups().List(t.Context(), "vms", registrar.ListOptions{}); err != nil || len(list) != 1 {
		t.Fatalf("cluster-a's groups after recovery: %d, %v; want web", len(list), err)
	}
}
