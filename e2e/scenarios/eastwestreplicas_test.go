package scenarios

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Two ewgate replicas under one istiod, as the Deployment runs them: both start from ONE config
// file (the ConfigMap) that names no xds.node.name or ip, each in a pod of its own (its own host
// name and network namespace, so the same listen addresses), so each takes its node name from its
// host name (its node IP defaults to the pod's first non-loopback address; a pod here has only lo,
// so both fall back to 127.0.0.1, which istiod accepts from two gateways). istiod holds two distinct gateway streams, both replicas learn the ServiceEntry's
// AUTO_PASSTHROUGH route, an Istio client echoes through each; then one replica gets SIGTERM: it
// turns unready and leaves istiod at once, drains its open connection, exits cleanly, and the
// other keeps serving old and new connections.
func TestEwgateReplicasUnderOneIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns := cluster.Namespace(t, "ewreplicas")
	be, sni := eastWestService(t, ctx, ns)

	// The ConfigMap's shape (deploy/kubernetes/overlays/istiod), with istiod's plaintext port
	// for TLS and token, which this suite's other scenarios cover.
	const admin, mesh = "0.0.0.0:15021", "0.0.0.0:15443"
	config := harness.WriteEwgateConfig(t, fmt.Sprintf(`
admin: {address: %s}
drain_timeout: 60s
listeners:
  - {name: mesh, kind: mesh, address: %s, routes_from: xds}
xds:
  server: %s
  node:
    namespace: istio-system
    cluster_id: %s
    labels: {istio: eastwestgateway}
`, admin, mesh, cluster.Istiod.XDSAddr, cluster.Istiod.ClusterID))
	forward := []string{cluster.Istiod.XDSAddr, be.Addr().String()}
	pods := []string{"ewgate-5d8f7c9b4-kx2lm", "ewgate-5d8f7c9b4-q7wzn"}
	var gws []*harness.Ewgate
	for _, name := range pods {
		gws = append(gws, harness.StartEwgatePod(t, harness.Pod{Name: name, Config: config, Admin: "127.0.0.1:15021", Forward: forward}))
	}

	for i, gw := range gws {
		if err := gw.WaitRoutes(ctx, sni, func(r string) bool { return strings.Contains(r, sni) && strings.Contains(r, be.Addr().String()) }); err != nil {
			t.Fatalf("replica %s: %v", pods[i], err)
		}
		if body, err := gw.Get(ctx, "/healthz/ready"); err != nil {
			t.Fatalf("replica %s not ready after istiod's push: %v %s", pods[i], err, body)
		}
	}
	// istiod names a stream <node name>.<namespace>-<n>: the host name became the node name.
	streams, err := waitGatewayStreams(ctx, pods, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("istiod's gateway streams: %s", streams)

	var open []*tls.Conn
	for i, gw := range gws {
		c := dialReplica(t, gw, "127.0.0.1:15443", sni)
		if got := echo(t, c, "via "+pods[i]); got != "via "+pods[i] {
			t.Fatalf("echo through %s: %q", pods[i], got)
		}
		open = append(open, c)
	}

	// The first replica is told to stop (a rolling update, a scale-down): not ready at once,
	// its stream to istiod ends, its open connection keeps working until the client ends it.
	stopped, kept := gws[0], gws[1]
	if err := stopped.Proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := stopped.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		if body, err := stopped.Get(ctx, "/healthz/ready"); err == nil {
			return fmt.Errorf("still ready while draining: %s", body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := waitGatewayStreams(ctx, pods[1:], pods[:1]); err != nil {
		t.Fatal(err)
	}
	if got := echo(t, open[0], "draining"); got != "draining" {
		t.Fatalf("the draining replica's open connection: %q", got)
	}
	open[0].Close()
	select {
	case <-stopped.Proc.Exited():
		if err := stopped.Proc.ExitErr(); err != nil {
			t.Fatalf("%s after its drain: %v\n%s", pods[0], err, stopped.Proc.Tail(20))
		}
	case <-ctx.Done():
		t.Fatalf("%s still running after its last connection closed (drain_timeout 60s)", pods[0])
	}

	// The other replica serves on: the open connection, a new one, its route and readiness.
	if got := echo(t, open[1], "still here"); got != "still here" {
		t.Fatalf("echo through %s after %s stopped: %q", pods[1], pods[0], got)
	}
	c := dialReplica(t, kept, "127.0.0.1:15443", sni)
	if got := echo(t, c, "new"); got != "new" {
		t.Fatalf("new connection through %s: %q", pods[1], got)
	}
	if body, err := kept.Get(ctx, "/healthz/ready"); err != nil {
		t.Fatalf("%s not ready after %s stopped: %v %s", pods[1], pods[0], err, body)
	}
}

// waitGatewayStreams waits until istiod holds exactly one ADS stream for each node in want and
// none for those in gone, and returns those streams' ids.
func waitGatewayStreams(ctx context.Context, want, gone []string) (string, error) {
	var last []harness.XDSConnection
	err := harness.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		conns, err := cluster.Istiod.Connections(ctx)
		if err != nil {
			return false, err
		}
		last = conns
		for _, n := range want {
			if countStreams(conns, n+".istio-system-") != 1 {
				return false, nil
			}
		}
		for _, n := range gone {
			if countStreams(conns, n+".istio-system-") != 0 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return "", fmt.Errorf("istiod's streams: want one each for %v, none for %v: %w\nlast /debug/connections: %+v", want, gone, err, last)
	}
	var ids []string
	for _, c := range last {
		for _, n := range want {
			if strings.HasPrefix(c.ConnectionID, n+".istio-system-") {
				ids = append(ids, c.ConnectionID)
			}
		}
	}
	return strings.Join(ids, ", "), nil
}

func countStreams(conns []harness.XDSConnection, prefix string) int {
	n := 0
	for _, c := range conns {
		if strings.HasPrefix(c.ConnectionID, prefix) {
			n++
		}
	}
	return n
}

// dialReplica is an Istio client (outbound_ SNI, ALPN istio) next to the replica: in its network.
func dialReplica(t *testing.T, gw *harness.Ewgate, addr, sni string) *tls.Conn {
	t.Helper()
	dial := func(ctx context.Context, _, a string) (net.Conn, error) { return gw.Dial(ctx, a) }
	c, err := tlsDialVia(dial, addr, sni, "istio")
	if err != nil {
		t.Fatalf("TLS through %s with SNI %s: %v", gw.Proc.Name, sni, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
