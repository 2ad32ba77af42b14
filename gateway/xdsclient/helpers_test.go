package xdsclient_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/controlplane"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/xdsclient"
	"github.com/ewgate/ewgate/registrar"
	"google.golang.org/grpc"
)

// backend is a TLS server that answers each session with its name and then echoes.
type backend struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup
}

func startBackend(t testing.TB, p *testkit.Cert, name string, sniNames ...string) *backend {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{p.Server(t, sniNames...).TLS()}, NextProtos: []string{"istio", "istio-peer-exchange"}})
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write([]byte(b.name + "\n")); err == nil {
					io.Copy(c, c)
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *backend) port() uint32 {
	_, p, _ := net.SplitHostPort(b.ln.Addr().String())
	n, _ := strconv.Atoi(p)
	return uint32(n)
}

// who dials the gateway with an Istio SNI and returns the name of the backend it reached.
func who(gwAddr string, p *testkit.Cert, sni string) (string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", gwAddr,
		&tls.Config{ServerName: sni, NextProtos: []string{"istio"}, RootCAs: p.Pool()})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n-1]), nil
}

// startGateway runs a gateway whose mesh listener takes routes from xds.
func startGateway(t testing.TB) *dataplane.Gateway {
	t.Helper()
	f, err := config.Parse([]byte("listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g := dataplane.New(dataplane.Options{Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	if err := g.Apply(f.DataPlane()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})
	return g
}

// runCP runs a control plane on ln until the returned stop is called (or the test ends).
func runCP(t testing.TB, ln net.Listener, opts controlplane.Options) (*controlplane.Server, func()) {
	t.Helper()
	if opts.Debounce == 0 {
		opts.Debounce, opts.MaxDelay = 5*time.Millisecond, 50*time.Millisecond
	}
	s := controlplane.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("control plane: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

func listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func xdsNode(t testing.TB) *corev3.Node {
	f, _ := config.Parse([]byte("{}"), "t.yaml")
	return xdsclient.NewNode(f.XDS.Node, "test")
}

// runClient runs the gateway's xDS client against addr.
func runClient(t testing.TB, addr string, g *dataplane.Gateway, reg prometheus.Registerer) *xdsclient.Client {
	t.Helper()
	f, _ := config.Parse([]byte("{}"), "t.yaml")
	c := xdsclient.New(xdsclient.Options{Target: addr, Node: xdsclient.NewNode(f.XDS.Node, "test"), Listeners: []string{"mesh"}, Sink: g,
		InitialBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Registerer: reg,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func entry(name, addr string, port uint32, labels map[string]string) *registrar.WorkloadEntry {
	return &registrar.WorkloadEntry{
		ObjectMeta: registrar.ObjectMeta{Name: name, Namespace: "default"},
		Spec: registrar.WorkloadEntrySpec{Address: addr, Ports: map[string]uint32{"tls": port}, Labels: labels,
			ServiceAccount: "reviews"},
	}
}

const reviewsHost = "reviews.default.svc.cluster.local"

var reviewsSNI = "outbound_.9080_._." + reviewsHost

func reviewsService() []config.Service {
	f, err := config.Parse([]byte(`services:
  - name: reviews
    hosts: [`+reviewsHost+`]
    ports: [{number: 9080, name: tls, protocol: TLS}]
    workload_selector: {labels: {app: reviews}}
`), "t.yaml")
	if err != nil {
		panic(err)
	}
	return f.Services
}

// serveSnapshot serves one snapshot for the test node over ADS (go-control-plane), with the
// server's callbacks cb (nil: none), and returns its address.
func serveSnapshot(t *testing.T, res map[resource.Type][]types.Resource, cb server.Callbacks) string {
	t.Helper()
	snapCache := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	snap, err := cache.NewSnapshot("1", res)
	if err != nil {
		t.Fatal(err)
	}
	if err := snapCache.SetSnapshot(context.Background(), xdsNode(t).GetId(), snap); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, server.NewServer(ctx, snapCache, cb))
	ln := listen(t, "127.0.0.1:0")
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { cancel(); gs.Stop(); <-done })
	return ln.Addr().String()
}
