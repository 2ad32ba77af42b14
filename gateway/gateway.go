package gateway

import (
	"context"
	"crypto/sha256"
	"net/http"
	"runtime"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/dataplane"
)

// Options are what the gateway needs besides its config.
type Options struct {
	// Path of the config file: reloads re-read it. Required for reloads; empty: the file is
	// never re-read (Reload logs a refusal).
	Path string
	// Loaded is the content cfg was parsed from: the file watcher reloads when the file's
	// content differs from it. Nil: the first poll of a watched file reloads it.
	Loaded []byte
	// Logger receives every component's logs. Nil: no logs.
	Logger *zap.Logger
	// Level, if set, follows log.level at each reload.
	Level *zap.AtomicLevel
	// Version is reported to the xDS server in the node, logged at start and exported in
	// ewgate_build_info. Empty: "dev".
	Version string
	// Revision is the source commit, exported in ewgate_build_info. Empty: "unknown".
	Revision string

	openKube kubeOpener // nil: the Kubernetes store (tests, which have no API server, set it)
}

// Gateway is ewgate assembled: the data plane, the admin servers and the components the config
// asks for, started in order by Start, reloaded by one goroutine, stopped by Shutdown.
type Gateway struct {
	opts       Options
	log        *zap.Logger
	reg        *prometheus.Registry
	dp         *dataplane.Gateway
	health     *controlHealth
	admin      *adminServers
	components *components // set by Start before the reload owner runs; never replaced

	reloads     chan string
	stopReloads context.CancelFunc
	bg          sync.WaitGroup // the reload owner and the file watcher
	cfg         *config.File   // the serving config: the reload owner's, then Shutdown's
	started     *config.File   // the config Start served: what restart-only settings still are

	shutdown    sync.Once
	shutdownErr error
}

// Start serves cfg. In order: the metrics registry and the data plane's state; the admin
// servers (readiness answers 503 until the end of Start); the data-plane listeners; the
// registrar's store; authn, the registrar and its workload groups; the built-in control plane
// and the in-process upstream the VM control endpoint reaches it by; the registrar and the VM
// control endpoint; the gateway's xDS client; and last the reload owner with the file watcher.
// On error what was started is stopped again before Start returns.
func Start(cfg *config.File, opts Options) (*Gateway, error) {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	g := &Gateway{opts: opts, log: opts.Logger, reg: prometheus.NewRegistry(), reloads: make(chan string, 1), started: cfg}
	g.logWarnings(cfg, "start")
	g.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(opts.Version, opts.Revision))
	g.dp = dataplane.New(dataplane.Options{Logger: g.log, Registerer: g.reg})
	g.health = newControlHealth(g.reg)
	g.health.set(func(h *controlHealth) { h.configured.Store(cfg.Control != nil) })

	var err error
	if g.admin, err = g.startAdmin(cfg); err != nil {
		return nil, err
	}
	if err := g.apply(cfg); err != nil {
		g.admin.close()
		return nil, err
	}
	if g.components, err = g.startComponents(cfg); err != nil {
		cut, cancel := context.WithCancel(context.Background())
		cancel() // not serving yet: whatever was accepted is closed at once
		g.dp.Shutdown(cut)
		g.admin.close()
		return nil, err
	}
	g.admin.register(g.components.vm.pages(g.log))
	g.admin.register(g.statusPages())
	g.health.set(func(h *controlHealth) { h.started.Store(true) })

	ctx, cancel := context.WithCancel(context.Background())
	g.stopReloads = cancel
	var loaded *[32]byte
	if opts.Loaded != nil {
		h := sha256.Sum256(opts.Loaded)
		loaded = &h
	}
	g.bg.Go(func() { g.watch(ctx, cfg.Reload.WatchInterval, loaded) })
	g.bg.Go(func() { g.ownReloads(ctx) })
	g.log.Info("ewgate serving", zap.String("version", opts.Version), zap.String("revision", opts.Revision), zap.String("config", opts.Path))
	return g, nil
}

// Reload asks the reload owner to re-read the config file; why is logged with the outcome. A
// reload already pending absorbs this one (it reads the file as it is when it runs). It never
// blocks.
func (g *Gateway) Reload(why string) {
	select {
	case g.reloads <- why:
	default:
	}
}

// Shutdown stops the gateway. First nothing is ready and nothing accepts: /healthz/ready and
// /healthz/control turn 503, the data-plane listeners and the VM control endpoint's listener
// close, and the xDS stream ends (the routes stay as they are while connections drain). Then
// reloads stop, and open connections and VM streams drain together until the config's
// drain_timeout passes or ctx ends (the control endpoint's own control.drain_timeout caps its
// streams); what is still open then is closed. Then the components behind them stop (the
// registrar, the built-in control plane, the store), the admin servers last. Shutdown returns when every goroutine the gateway
// started has exited. Connections cut at the deadline are logged, not an error (the drain did
// its job); the error is an admin server's failure. Later calls return the first call's result.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.shutdown.Do(func() { g.shutdownErr = g.stop(ctx) })
	return g.shutdownErr
}

func (g *Gateway) stop(ctx context.Context) error {
	g.health.set(func(h *controlHealth) { h.started.Store(false) })
	g.dp.StopAccepting()
	g.components.stopAccepting()

	g.stopReloads()
	g.bg.Wait() // g.cfg is Shutdown's from here
	g.log.Info("shutting down: draining connections", zap.Duration("drain_timeout", g.cfg.DrainTimeout))
	drainCtx, cancel := context.WithTimeout(ctx, g.cfg.DrainTimeout)
	defer cancel()
	var drains sync.WaitGroup
	drains.Go(func() {
		if err := g.dp.Shutdown(drainCtx); err != nil {
			g.log.Warn("drain ended with connections still open; they were closed", zap.Error(err))
		}
	})
	drains.Go(func() { g.components.drainControl(drainCtx) })
	drains.Wait()

	g.components.stop()
	err := g.admin.shutdown()
	g.log.Info("ewgate stopped")
	return err
}

// handler is the debug admin server's handler (every page).
func (g *Gateway) handler() http.Handler { return g.admin.debug }

// buildInfo is ewgate_build_info{version,revision,goversion} 1, as Prometheus and Istio export
// theirs: join it in queries to see which build serves (group_left).
func buildInfo(version, revision string) prometheus.Collector {
	if version == "" {
		version = "dev"
	}
	if revision == "" {
		revision = "unknown"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "ewgate_build_info",
		Help:        "Always 1; the labels say which build runs: version, revision (source commit) and goversion.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()},
	})
	g.Set(1)
	return g
}
