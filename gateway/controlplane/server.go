// Package controlplane is ewgate's built-in xDS control plane (standalone mode): a
// go-control-plane ADS server that turns the config file's services (ServiceEntry terms) and the
// registrar's WorkloadEntries into the resources istiod would send, in two views:
//
//   - to a gateway node (id router~...): the listener 0.0.0.0_15443 with one AUTO_PASSTHROUGH
//     filter chain per MESH_INTERNAL service port, an EDS cluster of the same outbound_ name, and
//     its mTLS endpoints on the gateway's network;
//   - to every other node (VMs, proxyless gRPC): clusters outbound|<port>||<host>, their
//     endpoints, and API listeners + route configurations named <host>:<port>, so that a grpc-go
//     client resolves xds:///<host>:<port>.
//
// Changes are coalesced (a debounce with a maximum delay) and pushed incrementally (model.go,
// build.go), only when the resources changed; versions are digests of the content. With a CA,
// the Istio certificate service is served on the same gRPC server.
package controlplane

import (
	"context"
	"encoding/hex"
	"errors"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/meshca"
	"github.com/ewgate/ewgate/registrar"
)

// Node groups of the snapshot cache.
const (
	groupGateway = "gateway"
	groupGRPC    = "grpc"
)

// Options configure a Server; the zero value of each optional field is documented on it.
type Options struct {
	Services []config.Service
	// Entries is where registered WorkloadEntries live. Nil: static endpoints only.
	Entries registrar.Resource[*registrar.WorkloadEntry]
	// Network is the gateway's own network; its view holds only endpoints of it (or of none).
	Network string
	// Locality is the gateway's own region/zone/subzone (xds.node.locality): its view's
	// endpoints get priorities by closeness to it, as istiod's locality failover gives them
	// (resources.go, localityPriority). Empty: every endpoint at priority 0.
	Locality string
	MeshPort uint32        // zero: 15443
	Debounce time.Duration // zero: config.DefaultDebounce (20ms) of quiet before a push
	MaxDelay time.Duration // zero: config.DefaultMaxPushDelay (1s); a change is never held longer
	// DNSVIPRange is the IPv4 CIDR of the virtual IPs of service hosts without addresses in the
	// name table (NDS); zero: config.DefaultVIPRange.
	DNSVIPRange string
	// CA, when not nil, is served as istio.v1.auth.IstioCertificateService.
	CA *meshca.CA
	// ServerOptions are added to the gRPC server Run creates (an authenticating interceptor).
	ServerOptions []grpc.ServerOption
	Logger        *zap.Logger           // nil: no logs
	Registerer    prometheus.Registerer // nil: metrics not exported
}

// Server is the built-in control plane.
type Server struct {
	opts  Options
	log   *zap.Logger
	cache cache.SnapshotCache
	eds   map[string]*cache.LinearCache // by node group: endpoints, versioned per resource (build.go)
	dns   *dnsTable                     // the NameTable type, in a cache of its own (dns.go)
	m     *cpMetrics

	trigger chan struct{} // capacity 1: "something changed"
	mu      sync.Mutex    // guards svcs, entries, dirty, full, last
	svcs    []config.Service
	entries map[string]*registrar.WorkloadEntry // namespace/name
	dirty   map[string]bool                     // entries changed since the last push
	full    bool                                // services changed or entries relisted: rebuild the whole model
	model   modelCache                          // only the push loop uses it
	last    *built
	builder *builder     // only the push loop uses it
	version atomic.Value // string
	pushes  atomic.Uint64
	synced  chan struct{} // closed after the first push
}

// New returns a Server; Run serves it.
func New(opts Options) *Server {
	if opts.MeshPort == 0 {
		opts.MeshPort = config.DefaultMeshPort
	}
	if opts.Debounce <= 0 {
		opts.Debounce = config.DefaultDebounce
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = max(config.DefaultMaxPushDelay, opts.Debounce)
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	s := &Server{
		opts:    opts,
		log:     opts.Logger,
		m:       newCPMetrics(opts.Registerer),
		trigger: make(chan struct{}, 1),
		svcs:    opts.Services,
		entries: map[string]*registrar.WorkloadEntry{},
		dirty:   map[string]bool{},
		synced:  make(chan struct{}),
		builder: newBuilder(opts.Network, opts.Locality, opts.MeshPort),
	}
	// Not go-control-plane's ADS mode: in that mode a request naming only some of a type's
	// resources is never answered (it expects Envoy to name them all), and proxyless grpc-go
	// subscribes to exactly the listener, route, cluster and endpoints it dials. Each view's
	// clusters, listeners and routes are one snapshot, its endpoints a linear cache updated
	// first (build.go), and the gateway client applies only complete sets, so the ordering ADS
	// mode adds is not needed.
	s.cache = cache.NewSnapshotCache(false, nodeGroup{}, nil)
	s.eds = map[string]*cache.LinearCache{
		groupGateway: cache.NewLinearCache(resource.EndpointType),
		groupGRPC:    cache.NewLinearCache(resource.EndpointType),
	}
	s.dns = newDNSTable(opts.DNSVIPRange, opts.Services, s.log)
	s.version.Store("")
	return s
}

// nodeGroup sends gateway nodes (router~...) the gateway view and everyone else the gRPC view.
type nodeGroup struct{}

func (nodeGroup) ID(n *corev3.Node) string {
	if strings.HasPrefix(n.GetId(), "router~") {
		return groupGateway
	}
	return groupGRPC
}

// SetServices replaces the services (a config reload); the change is pushed like any other.
func (s *Server) SetServices(svcs []config.Service) {
	s.mu.Lock()
	s.svcs = svcs
	s.full = true
	s.mu.Unlock()
	s.poke()
}

func (s *Server) poke() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// Version is the version of the resources being served ("" before the first push).
func (s *Server) Version() string { return s.version.Load().(string) }

// Pushes is the number of snapshots pushed so far (an unchanged build is not a push).
func (s *Server) Pushes() uint64 { return s.pushes.Load() }

func (s *Server) lastEndpoints() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		return -1
	}
	return s.last.endpoints
}

// Synced is closed once the first snapshot is served.
func (s *Server) Synced() <-chan struct{} { return s.synced }

// Register puts the ADS service (and the CA, if any) on gs, for callers that run their own
// gRPC server. Run does this on a server of its own.
func (s *Server) Register(ctx context.Context, gs *grpc.Server) {
	xs := server.NewServer(ctx, s.xdsCache(), s.callbacks())
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	if s.opts.CA != nil {
		securityv1alpha1.RegisterIstioCertificateServiceServer(gs, s.opts.CA)
	}
}

// Run serves gRPC on ln, follows the WorkloadEntries and pushes changes until ctx ends; it
// returns when every goroutine it started has exited.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gs := grpc.NewServer(s.opts.ServerOptions...)
	s.Register(ctx, gs)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.pushLoop(ctx) }()
	go func() { defer wg.Done(); s.watchEntries(ctx) }()
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	cancel() // ends every ADS stream (the xDS server's context) before the gRPC server stops
	gs.Stop()
	if err == nil {
		<-serveErr
	}
	wg.Wait()
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}

// pushLoop coalesces triggers: a push happens after Debounce of quiet, or MaxDelay after the
// first unpushed change, whichever comes first.
func (s *Server) pushLoop(ctx context.Context) {
	var quiet, deadline *time.Timer
	stop := func(t *time.Timer) {
		if t != nil {
			t.Stop()
		}
	}
	defer func() { stop(quiet); stop(deadline) }()
	var quietC, deadlineC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.trigger:
			stop(quiet)
			quiet = time.NewTimer(s.opts.Debounce)
			quietC = quiet.C
			if deadline == nil {
				deadline = time.NewTimer(s.opts.MaxDelay)
				deadlineC = deadline.C
			}
			continue
		case <-quietC:
		case <-deadlineC:
		}
		stop(quiet)
		stop(deadline)
		quiet, deadline, quietC, deadlineC = nil, nil, nil, nil
		s.push(ctx)
	}
}

// push builds the resources and serves them if they changed. Only the service ports whose
// content changed are built anew (build.go), and each resource type keeps its version while
// its content is unchanged, so a client is sent only the types that changed.
func (s *Server) push(ctx context.Context) {
	start := time.Now()
	s.mu.Lock()
	svcs := s.svcs
	entries := make([]*registrar.WorkloadEntry, 0, len(s.entries))
	for _, e := range s.entries {
		entries = append(entries, e)
	}
	var all, changed map[string]*registrar.WorkloadEntry
	if s.full || !s.model.valid {
		all = maps.Clone(s.entries)
	} else {
		changed = make(map[string]*registrar.WorkloadEntry, len(s.dirty))
		for k := range s.dirty {
			changed[k] = s.entries[k] // nil: deleted
		}
	}
	clear(s.dirty)
	s.full = false
	prev := s.last
	s.mu.Unlock()
	var ports []*servicePort
	if all != nil {
		ports = s.model.rebuild(svcs, all)
	} else {
		ports = s.model.update(changed)
	}
	s.dns.push(svcs, entries)
	b := s.builder.build(ports)
	s.m.buildSeconds.Observe(time.Since(start).Seconds())
	if prev != nil && prev.digest == b.digest {
		s.m.builds.WithLabelValues("unchanged").Inc()
		return
	}
	version := hex.EncodeToString(b.digest[:8])
	views := map[string]map[resource.Type]typed{groupGateway: b.gateway, groupGRPC: b.grpc}
	// Endpoints first: a client sees a new cluster only once its endpoints can be had.
	for group, view := range views {
		var was []types.Resource
		if prev != nil {
			was = prev.view(group)[resource.EndpointType].items
		}
		if err := updateEndpoints(s.eds[group], was, view[resource.EndpointType].items); err != nil {
			s.m.builds.WithLabelValues("failed").Inc()
			s.log.Error("control plane: endpoints refused", zap.String("group", group), zap.Error(err))
			return
		}
	}
	for group, view := range views {
		if err := s.cache.SetSnapshot(ctx, group, snapshot(view)); err != nil {
			s.m.builds.WithLabelValues("failed").Inc()
			s.log.Error("control plane: snapshot refused", zap.String("group", group), zap.Error(err))
			return
		}
	}
	s.mu.Lock()
	s.last = b
	s.mu.Unlock()
	s.version.Store(version)
	if s.pushes.Add(1) == 1 {
		close(s.synced)
	}
	s.m.builds.WithLabelValues("pushed").Inc()
	s.m.endpoints.Set(float64(b.endpoints))
	s.m.rebuilt.Add(float64(b.rebuilt))
	s.log.Info("control plane: pushed", zap.String("version", version), zap.Int("services", len(svcs)),
		zap.Int("workload_entries", len(entries)), zap.Int("ports_rebuilt", b.rebuilt), zap.Duration("build", time.Since(start)))
}
