// Package xdsclient is the gateway's xDS client: it subscribes over ADS (state of the world) to the
// listeners, clusters and endpoints a control plane (istiod, or ewgate's built-in one in package
// controlplane) sends an Istio east-west gateway, and turns the filter chains of the mesh-port
// listener (server_names + application_protocols -> tcp_proxy cluster) and their endpoints into
// the gateway's route tables (dataplane.SetMeshClusters).
//
// It ACKs what it applied and NACKs, with the error, what it cannot use, keeping everything else
// (and the last good version of a rejected resource). It reconnects with capped exponential
// backoff and jitter, keeps serving the last good routes while disconnected, and is ready once a
// first complete set (listeners, clusters and every referenced cluster's endpoints) arrived.
//
//	c := xdsclient.New(xdsclient.Options{Target: "istiod.istio-system.svc:15012", TLS: tlsCfg, Node: xdsclient.NewNode(cfg.XDS.Node),
//		Listeners: []string{"mesh"}, Sink: gw})
//	go c.Run(ctx)
package xdsclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ewgate/ewgate/gateway/dataplane"
)

// Sink receives the mesh route tables; *dataplane.Gateway is one.
type Sink interface {
	SetMeshClusters(listener string, clusters []dataplane.ClusterSpec) error
}

var _ Sink = (*dataplane.Gateway)(nil)

// Options configure a Client; the zero value of each optional field is documented on it.
type Options struct {
	Target    string      // host:port of the control plane
	TLS       *tls.Config // nil: plaintext (loopback only; the config refuses it otherwise)
	TokenFile string      // bearer token sent on each stream, re-read when it changes; needs TLS
	Node      *corev3.Node
	MeshPort  uint32   // zero: 15443
	Listeners []string // the gateway's routes_from: xds listeners that get the mesh routes
	Sink      Sink
	// InitialBackoff (zero: 500ms) doubles per failed attempt up to MaxBackoff (zero: 30s);
	// each wait is drawn at random from its upper half.
	InitialBackoff, MaxBackoff time.Duration
	Logger                     *zap.Logger           // nil: no logs
	Registerer                 prometheus.Registerer // nil: metrics not exported
}

// Client is the gateway's xDS client.
type Client struct {
	opts Options
	log  *zap.Logger
	m    *clientMetrics

	// The last good state, kept across streams; only the stream goroutine touches it.
	st    *state
	ready atomic.Bool
	mu    sync.Mutex
	last  time.Time // last applied update
	obs   observed  // what Status reports; guarded by mu

	edsNonce string // nonce of the last EDS response on the current stream
}

// accepted is a resource the client took, with the response version it came in.
type accepted[T any] struct {
	msg    T
	routes []route // listeners of the mesh port
}

type state struct {
	listeners map[string]*accepted[*listenerv3.Listener]
	clusters  map[string]*accepted[*clusterv3.Cluster]
	endpoints map[string]*endpointv3.ClusterLoadAssignment
	version   map[string]string // type URL -> last ACKed version
	got       map[string]bool   // type URL -> a response was accepted
	edsNames  []string          // current EDS subscription
}

func newState() *state {
	return &state{
		listeners: map[string]*accepted[*listenerv3.Listener]{},
		clusters:  map[string]*accepted[*clusterv3.Cluster]{},
		endpoints: map[string]*endpointv3.ClusterLoadAssignment{},
		version:   map[string]string{},
		got:       map[string]bool{},
	}
}

// New returns a Client; Run connects it.
func New(opts Options) *Client {
	if opts.MeshPort == 0 {
		opts.MeshPort = 15443
	}
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = 500 * time.Millisecond
	}
	if opts.MaxBackoff < opts.InitialBackoff {
		opts.MaxBackoff = max(30*time.Second, opts.InitialBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	c := &Client{opts: opts, log: opts.Logger, st: newState()}
	c.m = newClientMetrics(opts.Registerer, c.sinceUpdate)
	return c
}

// Ready reports whether a first complete set of routes has been applied.
func (c *Client) Ready() bool { return c.ready.Load() }

// sinceUpdate returns the seconds since routes were last applied; false before the first.
func (c *Client) sinceUpdate() (float64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last.IsZero() {
		return 0, false
	}
	return time.Since(c.last).Seconds(), true
}

// Run keeps a stream to the control plane until ctx ends, reconnecting with backoff. Routes
// applied stay while disconnected. It returns ctx.Err() after its goroutines have exited.
func (c *Client) Run(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if c.opts.TLS != nil {
		creds = credentials.NewTLS(c.opts.TLS)
	}
	dialOpts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// gRPC's own reconnect backoff grows to 120 s by default; keep it within ours.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: c.opts.InitialBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: c.opts.MaxBackoff,
		}, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
	}
	if c.opts.TokenFile != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(&tokenFile{path: c.opts.TokenFile}))
	}
	cc, err := grpc.NewClient(c.opts.Target, dialOpts...)
	if err != nil {
		return fmt.Errorf("xdsclient: %w", err)
	}
	defer cc.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(cc)
	for attempt := 0; ; attempt++ {
		progressed, err := c.stream(ctx, ads)
		c.m.connected.Set(0)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if progressed {
			attempt = 0
		}
		wait := c.backoff(attempt)
		c.m.reconnects.Inc()
		c.log.Warn("xds: stream ended; reconnecting", zap.String("target", c.opts.Target), zap.Error(err),
			zap.Duration("in", wait), zap.Bool("ready", c.Ready()))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// backoff is InitialBackoff * 2^attempt capped at MaxBackoff, drawn from its upper half.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.opts.InitialBackoff
	for i := 0; i < attempt && d < c.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, c.opts.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// stream runs one ADS stream; it reports whether any response was accepted on it.
func (c *Client) stream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	c.m.connected.Set(1)
	c.observeConnected(true)
	defer c.observeConnected(false)
	c.edsNonce = ""
	first := true
	send := func(typ string, names []string, nonce string, nack error) error {
		req := &discovery.DiscoveryRequest{TypeUrl: typ, VersionInfo: c.st.version[typ], ResourceNames: names, ResponseNonce: nonce}
		if first {
			req.Node = c.opts.Node // the node goes on the first request of a stream only
			first = false
		}
		if nack != nil {
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		}
		return s.Send(req)
	}
	// Clusters before listeners, as Envoy asks; endpoints for what is already known.
	if err := send(typeCluster, nil, "", nil); err != nil {
		return false, err
	}
	if err := send(typeListener, nil, "", nil); err != nil {
		return false, err
	}
	if len(c.st.edsNames) > 0 {
		if err := send(typeEndpoint, c.st.edsNames, "", nil); err != nil {
			return false, err
		}
	}
	progressed := false
	for {
		resp, err := s.Recv()
		if err != nil {
			return progressed, err
		}
		c.m.responses.WithLabelValues(short(resp.GetTypeUrl()), "received").Inc()
		nack := c.handle(resp)
		if nack == nil {
			progressed = true
		}
		names := []string(nil)
		if resp.GetTypeUrl() == typeEndpoint {
			names = c.st.edsNames
		}
		if err := send(resp.GetTypeUrl(), names, resp.GetNonce(), nack); err != nil {
			return progressed, err
		}
		// New clusters referenced: subscribe to their endpoints.
		if resp.GetTypeUrl() != typeEndpoint {
			if want := c.wantEDS(); !slices.Equal(want, c.st.edsNames) && len(want) > 0 {
				c.st.edsNames = want
				if err := send(typeEndpoint, want, c.edsNonce, nil); err != nil {
					return progressed, err
				}
			}
		}
	}
}

func short(typeURL string) string {
	switch typeURL {
	case typeListener:
		return "lds"
	case typeCluster:
		return "cds"
	case typeEndpoint:
		return "eds"
	}
	return "other"
}

// errUnknownType is NACKed: the client subscribed to nothing of that type.
var errUnknownType = errors.New("xdsclient: resource type not subscribed")

// handle takes a response into the state, applies the routes when the state is complete, and
// returns the error to NACK with (nil: ACK). Resources that failed keep their last good version.
func (c *Client) handle(resp *discovery.DiscoveryResponse) error {
	typ := resp.GetTypeUrl()
	var errs []error
	switch typ {
	case typeListener:
		next := map[string]*accepted[*listenerv3.Listener]{}
		for _, a := range resp.GetResources() {
			l, routes, err := decodeListener(a, c.opts.MeshPort)
			if l == nil {
				errs = append(errs, err)
				continue
			}
			if err != nil {
				errs = append(errs, err) // the usable chains still serve
			}
			next[l.GetName()] = &accepted[*listenerv3.Listener]{msg: l, routes: routes}
		}
		c.st.listeners = next
	case typeCluster:
		next := map[string]*accepted[*clusterv3.Cluster]{}
		for _, a := range resp.GetResources() {
			cl, err := decodeCluster(a)
			if err != nil {
				errs = append(errs, err)
				// Keep the last good version of a cluster whose update is refused.
				var named clusterv3.Cluster
				if a.UnmarshalTo(&named) == nil {
					if prev := c.st.clusters[named.GetName()]; prev != nil {
						next[named.GetName()] = prev
					}
				}
				continue
			}
			next[cl.GetName()] = &accepted[*clusterv3.Cluster]{msg: cl}
		}
		c.st.clusters = next
	case typeEndpoint:
		for _, a := range resp.GetResources() {
			cla, err := decodeEndpoints(a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.st.endpoints[cla.GetClusterName()] = cla
		}
		c.edsNonce = resp.GetNonce()
	default:
		return fmt.Errorf("%w: %s", errUnknownType, typ)
	}
	nack := errors.Join(errs...)
	if nack == nil {
		c.st.version[typ] = resp.GetVersionInfo()
	} else {
		c.m.responses.WithLabelValues(short(typ), "rejected").Inc()
		c.log.Warn("xds: NACK: part of a response cannot be used; the rest is applied", zap.String("type", short(typ)),
			zap.String("version", resp.GetVersionInfo()), zap.Error(nack))
	}
	c.st.got[typ] = true
	c.observeResponse(short(typ), resp.GetVersionInfo(), nack)
	c.apply(typ)
	return nack
}
