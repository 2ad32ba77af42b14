package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/controlplane"
	"github.com/ewgate/ewgate/gateway/meshca"
	"github.com/ewgate/ewgate/gateway/xdsclient"
	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube"
)

// components are what runs beside the data plane when the config asks for it: the registrar's
// store, the VM control endpoint with authn and the registrar (vm.go), the built-in control
// plane and the gateway's xDS client. Changing their settings needs a restart; services and
// workload groups follow reloads.
type components struct {
	log    *zap.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stores []*store // the registration stores; none when the config needs none
	health *controlHealth
	cp     *controlplane.Server
	vm     *vmSide

	xds     *xdsclient.Client // the gateway's xDS client; nil without one
	stopXDS func()            // ends the xDS client and waits for it; nil without one

	afterBuiltinStop func() // a test's hook: runs after the built-in upstream's Stop
	openKube         kubeOpener
}

// store is one registration store: the one store of every cluster (cluster empty), or with
// kubernetes.clusters the API server of one cluster.
type store struct {
	cluster string
	st      registrar.Store // nil while a store out of reach at start is not open (latestore.go)
	close   func()          // releases the store; nil while st is
	where   string          // where the store is, for logs

	// A Kubernetes store: reopen opens it again, err is why the last open failed (nil once open;
	// after start guarded by its storeRegistrar's mu, latestore.go retries it), field is its
	// config field, log its logger.
	reopen func(ctx context.Context) (registrar.Store, func(), error)
	err    error
	field  string
	log    *zap.Logger
}

// kubeOpener opens the Kubernetes store of a kubeconfig ("" : in-cluster) and returns it with
// its release. Gateway tests, which have no API server, stand memory stores in for it.
type kubeOpener func(ctx context.Context, kubeconfig, leaseNamespace string, log *zap.Logger) (registrar.Store, func(), error)

// errKubeconfig marks a kubeconfig the store refuses: retrying cannot mend it, so it stops the
// start, where an API server out of reach does not (latestore.go).
var errKubeconfig = errors.New("kubeconfig refused")

func openKube(ctx context.Context, kubeconfig, leaseNamespace string, log *zap.Logger) (registrar.Store, func(), error) {
	rc, err := kube.ClientConfig(kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errKubeconfig, err)
	}
	st, err := kube.New(ctx, kube.Options{Config: rc, LeaseNamespace: leaseNamespace, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	return st, st.Close, nil
}

// startComponents starts, in dependency order, the store, the VM control endpoint, the built-in
// control plane (standalone mode) and the gateway's xDS client (routes_from: xds listeners).
func (g *Gateway) startComponents(cfg *config.File) (p *components, err error) {
	reg := g.reg
	ctx, cancel := context.WithCancel(context.Background())
	p = &components{log: g.log, ctx: ctx, cancel: cancel, health: g.health, openKube: g.opts.openKube}
	if p.openKube == nil {
		p.openKube = openKube
	}
	defer func() {
		if err != nil {
			p.stop()
		}
	}()
	if err = p.openStores(cfg); err != nil {
		return nil, err
	}
	if err = p.startVM(cfg, reg); err != nil {
		return nil, err
	}
	target := cfg.XDS.Server
	if cfg.ControlPlaneEnabled() {
		addr, err := p.startControlPlane(cfg, reg)
		if err != nil {
			return nil, err
		}
		if target == config.XDSServerBuiltin {
			target = addr
		}
	}
	p.vm.run(p)
	if cfg.UsesXDS() {
		if err := p.startXDSClient(cfg, reg, g, target); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (p *components) startXDSClient(cfg *config.File, reg prometheus.Registerer, g *Gateway, target string) error {
	var tlsCfg *tls.Config
	if t := cfg.XDS.TLS; t != nil {
		tlsCfg = &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
		if t.CAFile != "" {
			pem, err := os.ReadFile(t.CAFile)
			if err != nil {
				return fmt.Errorf("xds.tls.ca_file: %w", err)
			}
			tlsCfg.RootCAs = x509.NewCertPool()
			if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
				return errors.New("xds.tls.ca_file: no PEM certificate in it")
			}
		}
	}
	var listeners []string
	for _, l := range cfg.Listeners {
		if l.RoutesFromXDS() {
			listeners = append(listeners, l.Name)
		}
	}
	c := xdsclient.New(xdsclient.Options{
		Target: target, TLS: tlsCfg, TokenFile: cfg.XDS.TokenFile, Node: xdsclient.NewNode(cfg.XDS.Node, g.opts.Version),
		MeshPort: cfg.XDS.MeshPort, Listeners: listeners, Sink: g.dp,
		InitialBackoff: cfg.XDS.InitialBackoff, MaxBackoff: cfg.XDS.MaxBackoff,
		Logger: p.log.Named("xds"), Registerer: reg,
	})
	p.xds = c
	xctx, cancel := context.WithCancel(p.ctx)
	done := p.goRun("xds client", func(context.Context) error {
		if err := c.Run(xctx); xctx.Err() == nil {
			return err
		}
		return nil
	})
	p.stopXDS = func() { cancel(); <-done }
	p.log.Info("xds client started", zap.String("server", target), zap.Strings("listeners", listeners))
	return nil
}

func (p *components) startControlPlane(cfg *config.File, reg prometheus.Registerer) (string, error) {
	cpc := cfg.ControlPlane
	opts := controlplane.Options{
		Services: cfg.Services, Network: cfg.XDS.Node.Network, Locality: cfg.XDS.Node.Locality, MeshPort: cfg.XDS.MeshPort,
		Debounce: cpc.Debounce, MaxDelay: cpc.MaxPushDelay, DNSVIPRange: cpc.DNS.VIPRange, Logger: p.log.Named("controlplane"), Registerer: reg,
	}
	if st := p.entriesStore(cfg); st != nil {
		opts.Entries = st.st.WorkloadEntries()
	}
	if cpc.CA.DataDir != "" || cpc.CA.CertFile != "" {
		a, err := meshca.Open(meshca.Options{DataDir: cpc.CA.DataDir, CertFile: cpc.CA.CertFile, KeyFile: cpc.CA.KeyFile,
			TTL: cpc.CA.TTL, MaxTTL: cpc.CA.MaxTTL, TrustDomain: cpc.CA.TrustDomain, Logger: p.log.Named("ca"), Registerer: reg})
		if err != nil {
			return "", err
		}
		opts.CA = a
	}
	ln, err := net.Listen("tcp", cpc.Address)
	if err != nil {
		return "", fmt.Errorf("control plane listener: %w", err)
	}
	p.cp = controlplane.New(opts)
	p.goRun("control plane", func(ctx context.Context) error { return p.cp.Run(ctx, ln) })
	p.log.Info("listening", zap.String("listener", "control_plane"), zap.String("kind", "xds"), zap.Stringer("address", ln.Addr()))
	if p.vm != nil && p.vm.front != nil && cfg.BuiltinUpstream() {
		// The VM control endpoint reaches the same control plane in-process, over a listener
		// nothing outside the process can open, with its interceptors turning each call back
		// into the verified identity (so the CA signs for the caller).
		gs := grpc.NewServer(p.vm.front.BuiltinServerOptions()...)
		p.cp.Register(p.ctx, gs)
		bl := p.vm.front.BuiltinListener()
		// Serve returns once Stop has run; the goroutine that calls Stop is owned too, so
		// that stop returns only after the server is stopped.
		p.goRun("built-in upstream", func(context.Context) error { return gs.Serve(bl) })
		p.goRun("built-in upstream stop", func(ctx context.Context) error {
			<-ctx.Done()
			gs.Stop()
			if p.afterBuiltinStop != nil {
				p.afterBuiltinStop()
			}
			return nil
		})
	}
	return ln.Addr().String(), nil
}

// goRun runs fn until the components stop; stop waits for it. The channel is closed when fn has
// returned.
func (p *components) goRun(name string, fn func(ctx context.Context) error) <-chan struct{} {
	done := make(chan struct{})
	p.wg.Go(func() {
		defer close(done)
		if err := fn(p.ctx); err != nil && p.ctx.Err() == nil {
			p.log.Error(name+" stopped", zap.Error(err))
		}
	})
	return done
}

// reload hands the new services to the control plane and the new groups to the store.
func (p *components) reload(cfg *config.File) error {
	if p == nil {
		return nil
	}
	if p.cp != nil {
		p.cp.SetServices(cfg.Services)
	}
	return p.vm.syncGroups(p.ctx, cfg)
}

// stopAccepting closes the listeners VMs connect to (the control endpoint's) and ends the
// gateway's xDS stream: a gateway that accepts nothing needs no new routes, its stream ending
// tells istiod at once that this replica is going, and the routes stay as they are while the
// connections drain. See Gateway.Shutdown.
func (p *components) stopAccepting() {
	if p == nil {
		return
	}
	p.vm.stopAccepting()
	if p.stopXDS != nil {
		p.stopXDS()
	}
}

// drainControl waits for the control endpoint's drain, cutting it when ctx ends.
func (p *components) drainControl(ctx context.Context) {
	if p != nil {
		p.vm.drain(ctx)
	}
}

// stop ends everything and waits for it.
func (p *components) stop() {
	if p == nil {
		return
	}
	p.cancel()
	p.wg.Wait()
	p.vm.close()
	for _, st := range p.stores {
		if st.close != nil { // nil: a store never reached
			st.close()
		}
	}
}

// openStores opens the stores of WorkloadEntries and WorkloadGroups that the registrar writes
// and the built-in control plane reads: the API server (one, or one per cluster), or a
// directory. An API server out of reach does not stop the start (latestore.go): its store is
// left unopened and retried while the rest serves, unless the built-in control plane serves
// its WorkloadEntries. A directory that does not open stops the start.
func (p *components) openStores(cfg *config.File) error {
	leaseNS := ""
	if cfg.Registrar != nil {
		leaseNS = cfg.Registrar.LeaseNamespace
	}
	kubeStore := func(cluster, kubeconfig, field string, log *zap.Logger) {
		s := &store{cluster: cluster, where: "kubernetes", field: field, log: log}
		if cluster != "" {
			s.where += " " + cluster
		}
		s.reopen = func(ctx context.Context) (registrar.Store, func(), error) {
			return p.openKube(ctx, kubeconfig, leaseNS, log)
		}
		s.st, s.close, s.err = s.reopen(p.ctx)
		p.stores = append(p.stores, s)
	}
	switch {
	case cfg.PerClusterStores():
		for i, c := range cfg.Kubernetes.Clusters {
			kubeStore(c.Cluster, c.Kubeconfig, fmt.Sprintf("kubernetes.clusters[%d] (%s)", i, c.Cluster),
				p.log.Named("kube").With(zap.String("cluster", c.Cluster)))
		}
	case cfg.Kubernetes != nil:
		kubeStore("", cfg.Kubernetes.Kubeconfig, "kubernetes", p.log.Named("kube"))
	case cfg.ControlPlane.WorkloadEntriesDir != "":
		st, err := registrar.OpenFileStoreWith(cfg.ControlPlane.WorkloadEntriesDir, registrar.FileStoreOptions{Logger: p.log.Named("store")})
		if err != nil {
			return fmt.Errorf("control_plane.workload_entries_dir: %w", err)
		}
		p.stores = []*store{{st: st, close: func() { st.Close() }, where: st.Dir()}}
	}
	return p.storesOutOfReach(cfg)
}

// storesOutOfReach checks the Kubernetes stores that did not open: a refused kubeconfig, or the
// store of the built-in control plane's entries, stops the start; the others are logged and
// retried once the VM side runs (latestore.go).
func (p *components) storesOutOfReach(cfg *config.File) error {
	var builtin *store // must open at start
	if cfg.ControlPlaneEnabled() {
		builtin = p.entriesStore(cfg)
	}
	for _, st := range p.stores {
		switch {
		case st.err == nil:
		case errors.Is(st.err, errKubeconfig):
			return fmt.Errorf("%s: %w", st.field, st.err)
		case st == builtin:
			return fmt.Errorf("%s: %w (the built-in control plane serves the WorkloadEntries of this store: it must be reached at start)", st.field, st.err)
		}
	}
	for _, st := range p.stores {
		if st.err != nil {
			st.log.Error("registration store out of reach at start: the mesh listeners and the other clusters' VMs are served, "+
				"VMs of this store's cluster are refused (Unavailable, they retry) until it is reached. "+
				"Check the kubeconfig and that the API server is reachable; ewgate retries with backoff and recovers by itself",
				zap.String("field", st.field), zap.Error(st.err))
		}
	}
	return nil
}

// entriesStore is the store whose WorkloadEntries the built-in control plane serves: the one
// store, or with a store per cluster the store of the built-in upstream's cluster (the VMs that
// control plane serves); nil when there is none.
func (p *components) entriesStore(cfg *config.File) *store {
	if len(p.stores) == 1 && p.stores[0].cluster == "" {
		return p.stores[0]
	}
	if cfg.Control == nil {
		return nil
	}
	for _, u := range cfg.Control.Upstreams {
		for _, st := range p.stores {
			if u.Builtin && st.cluster == u.Cluster {
				return st
			}
		}
	}
	return nil
}
