package scenarios

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A proxyless grpc-go client on a VM resolves a mesh service through its pilot-agent and istiod
// (LDS/RDS/CDS/EDS from istiod's grpc generator) and reaches a loopback gRPC backend that a
// ServiceEntry names: the harness's xDS client gets a working route, which the later scenarios
// (ewgate in the middle, ewgate standalone) build on.
func TestVMGRPCClientRoutesViaIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 2*time.Minute)
	ns, root := vmSetup(t, "vmroute")

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	port := int64(lis.Addr().(*net.TCPAddr).Port)

	host := "echo." + ns + ".svc.cluster.local"
	if _, err := cluster.API.CreateServiceEntry(ctx, ns, "echo", map[string]any{
		"hosts":      []any{host},
		"location":   "MESH_INTERNAL",
		"resolution": "STATIC",
		"ports":      []any{map[string]any{"number": port, "name": "grpc", "protocol": "GRPC"}},
		"endpoints":  []any{map[string]any{"address": "127.0.0.1"}},
	}); err != nil {
		t.Fatal(err)
	}
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{
		Name: "client1", Namespace: ns, ServiceAccount: "vm",
		IP: "127.0.9.30", Network: "vmnet", ClusterID: cluster.Istiod.ClusterID,
		Token: tok, RootPEM: root,
		DiscoveryAddr: cluster.Istiod.SecureAddr, SAN: cluster.Istiod.SAN,
	})
	client := vm.StartXDSClient(t, ctx, host+":"+strconv.FormatInt(port, 10), "health")
	if err := client.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatal(err)
	}
}
