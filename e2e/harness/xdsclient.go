package harness

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers
)

// The grpc-go xDS client reads GRPC_XDS_BOOTSTRAP when grpc initialises, so it cannot run inside
// the test process (whose bootstrap would be fixed once): the test binary re-executes itself with
// these variables, and TestMain hands over to RunXDSClientIfRequested.
const (
	envRole      = "EWGATE_E2E_ROLE"
	roleXDS      = "xds-client"
	envXDSTarget = "EWGATE_E2E_XDS_TARGET"
	envXDSRPC    = "EWGATE_E2E_XDS_RPC"
)

// RunXDSClientIfRequested must be the first call of TestMain in every package that starts xDS
// clients: in a re-executed child it runs the client and exits; otherwise it returns at once.
func RunXDSClientIfRequested() {
	if os.Getenv(envRole) != roleXDS {
		return
	}
	os.Exit(runXDSClient(os.Getenv(envXDSTarget), os.Getenv(envXDSRPC)))
}

// StartXDSClientProc re-executes this test binary as a grpc-go xDS client with the given bootstrap
// file, dialing xds:///target. rpc "health" makes it call grpc.health.v1.Health/Check until one
// succeeds (it prints "xds-client: rpc ok"); "" only connects.
func StartXDSClientProc(bootstrap, target, rpc string) (*Proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return StartProc(ProcSpec{
		Name: "xds-client", Path: self,
		Args: []string{"-test.run=^$"},
		Env: []string{
			envRole + "=" + roleXDS,
			envXDSTarget + "=" + target,
			envXDSRPC + "=" + rpc,
			"GRPC_XDS_BOOTSTRAP=" + bootstrap,
			"GRPC_GO_LOG_SEVERITY_LEVEL=info",
		},
	})
}

func runXDSClient(target, rpc string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// Bounded even if nobody stops it (the parent's Pdeathsig normally does).
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()

	conn, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("xds-client: dial error:", err)
		return 1
	}
	defer conn.Close()
	fmt.Println("xds-client: dialing xds:///" + target)
	conn.Connect()
	if rpc == "health" {
		go healthLoop(ctx, conn)
	}
	for {
		s := conn.GetState()
		fmt.Println("xds-client: state", s)
		if s == connectivity.Shutdown || !conn.WaitForStateChange(ctx, s) {
			return 0
		}
	}
}

func healthLoop(ctx context.Context, conn *grpc.ClientConn) {
	c := healthpb.NewHealthClient(conn)
	for i := 0; i < 120 && ctx.Err() == nil; i++ {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := c.Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			fmt.Println("xds-client: rpc ok", resp.GetStatus())
			return
		}
		fmt.Println("xds-client: rpc error:", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second): // pacing between attempts, not a wait for a condition
		}
	}
}
