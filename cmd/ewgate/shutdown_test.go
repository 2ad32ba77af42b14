package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// holdingADS is an upstream control plane that answers a stream's first request and then holds
// the stream open until the client ends it.
type holdingADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
}

func (holdingADS) StreamAggregatedResources(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	req, err := s.Recv()
	if err != nil {
		return err
	}
	if err := s.Send(&discoveryv3.DiscoveryResponse{TypeUrl: req.TypeUrl, VersionInfo: "1", Nonce: "1"}); err != nil {
		return err
	}
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

// holdingUpstream serves holdingADS in plaintext on loopback until the test ends.
func holdingUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, holdingADS{})
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return ln.Addr().String()
}

// TestShutdownTurnsNotReadyBeforeAnythingDrains is issue 18's first bug: on SIGTERM the VM
// control endpoint used to drain (its graceful stop waits for open VM streams, up to
// control.drain_timeout) before the data plane even began its shutdown, so /healthz/ready kept
// answering 200 and the mesh listener kept accepting for that time. With a VM's ADS stream held
// open (the control endpoint's drain cannot end), readiness must already be 503 and both the
// mesh listener and 15012 refuse new connections; the process exits 0 once the stream ends.
func TestShutdownTurnsNotReadyBeforeAnythingDrains(t *testing.T) {
	env := newVMTestEnv(t)
	upstream := holdingUpstream(t)
	cfg := strings.Replace(env.config(), "  upstreams: [{cluster: cluster1, builtin: true}]\n",
		"  upstreams: [{cluster: cluster1, address: "+upstream+", plaintext: true, identity: xfcc}]\n  drain_timeout: 60s\n", 1) + "drain_timeout: 60s\n"
	path := filepath.Join(env.dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, path)
	admin := "http://" + p.addr(t, "admin")
	control := p.addr(t, "control")
	mesh := p.addr(t, "mesh")
	testkit.Eventually(t, "ready", func() bool { code, _ := httpGet(t, admin+"/healthz/ready"); return code == 200 })

	// A VM's ADS stream, open through the whole test.
	cc, _, asVM := env.vmClient(t, control)
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(asVM)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": "cluster1", "NAMESPACE": "vms"})
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~10.1.2.3~web-1.vms~vms.svc.cluster.local", Metadata: md},
		TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := ads.Recv(); err != nil {
		t.Fatalf("first ADS response: %v", err)
	}

	p.cmd.Process.Signal(syscall.SIGTERM)
	// 15012 stops accepting once the shutdown has begun (before and after the fix alike); from
	// then on, with the VM stream still open, the drain is still going on.
	refused := func(addr string) bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}
	testkit.Eventually(t, "the control endpoint refusing connections", func() bool { return refused(control) })
	if code, _ := httpGet(t, admin+"/healthz/ready"); code != 503 {
		t.Errorf("/healthz/ready answers %d while the control endpoint drains; want 503 as soon as the drain begins", code)
	}
	if code, _ := httpGet(t, admin+"/healthz/control"); code != 503 {
		t.Errorf("/healthz/control answers %d while draining; want 503", code)
	}
	if !refused(mesh) {
		t.Error("the mesh listener accepts a new connection while the control endpoint drains; want it closed before anything drains")
	}
	select {
	case err := <-p.done:
		t.Fatalf("ewgate exited (%v) with a VM stream open inside the drain period", err)
	default:
	}
	// The VM goes (closing its connection ends its stream): the drain ends, the process exits 0.
	cc.Close()
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit after drain: %v; want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ewgate did not exit after the VM stream ended")
	}
}
