// Package dataplane is ewgate's data plane: listeners that peek the TLS ClientHello, route it by
// SNI through an immutable route snapshot, dial an endpoint and splice bytes both ways without
// terminating TLS. Mesh listeners accept only Istio outbound_ names with an Istio mTLS ALPN;
// ingress listeners have their own host table and never reach a mesh cluster.
//
// It does not parse configuration files (package config does) and does not speak xDS; whoever
// owns the routes hands it a config with Apply, and open connections are never cut by that.
//
//	g := dataplane.New(dataplane.Options{Logger: log, Registerer: reg})
//	if err := g.Apply(cfg); err != nil { ... }   // binds the listeners and starts serving
//	...
//	g.Shutdown(ctx)                               // stop accepting, drain, close the rest
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/internal/logsample"
	"github.com/ewgate/ewgate/gateway/splice"
)

// ErrShutdown is returned by Apply after Shutdown has begun.
var ErrShutdown = errors.New("dataplane: shutting down")

// Options are the Gateway's seams; the zero value works.
type Options struct {
	// Logger receives one line per connection at info and problems at warn. Nil: no logs.
	Logger *zap.Logger
	// Registerer receives the ewgate_* data-plane metrics. Nil: metrics are not exported.
	Registerer prometheus.Registerer
	// Now is the clock for ejections and for sampling refusal log lines. Nil: time.Now.
	Now func() time.Time
}

// Gateway serves the listeners of the current config.
type Gateway struct {
	log      *zap.Logger
	m        *metrics
	dm       *dynamicMetrics
	now      func() time.Time
	refusals *logsample.Sampler // refusal log lines, per listener and result

	snap     atomic.Pointer[Snapshot]
	states   states
	ready    atomic.Bool
	draining atomic.Bool // Shutdown began: no accepting, not ready
	cutting  atomic.Bool // the drain deadline passed: every connection is being closed

	mu        sync.Mutex // guards listeners, version, cfg, dynamic and serialises Apply
	cfg       *Config
	dynamic   map[string]map[string]*dynamicCluster // routes_from: xds listener -> cluster name -> cluster
	pending   atomic.Bool                           // a routes_from: xds listener has had no table yet
	listeners map[string]*listener
	version   uint64
	relayCfg  *Relay                        // the relay settings of the first config; nil before it
	epoll     atomic.Pointer[splice.Engine] // the epoll relay engine; nil when relaying with goroutines
	wg        sync.WaitGroup                // accept loops and connection handlers

	// The open connections. A lock of their own: the relay engine's loops take it for each
	// connection, and must never wait for Apply or StopAccepting (which waits for the loops).
	connsMu sync.Mutex
	conns   map[*conn]struct{}

	clusterConns clusterConns             // open relayed connections per listener and cluster
	routed       map[listenerCluster]bool // the pairs whose series routedSeries keeps; g.mu
}

// New returns a Gateway with no listeners; Apply starts serving.
func New(opts Options) *Gateway {
	g := &Gateway{
		log:       opts.Logger,
		m:         newMetrics(opts.Registerer),
		dm:        newDynamicMetrics(opts.Registerer),
		dynamic:   map[string]map[string]*dynamicCluster{},
		now:       opts.Now,
		listeners: map[string]*listener{},
		conns:     map[*conn]struct{}{},
	}
	if g.log == nil {
		g.log = zap.NewNop()
	}
	g.registerEngineMetrics(opts.Registerer)
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(&clusterCollector{g: g})
	}
	if g.now == nil {
		g.now = time.Now
	}
	g.refusals = logsample.New(refusalLogBurst, refusalLogInterval, g.now)
	return g
}

// Apply makes f the serving config: listeners that are new (or moved) are bound, those gone are
// closed, and the route snapshot is swapped for new connections. Open connections continue on
// the routes they were given. If a listener cannot be bound, or the connection caps do not fit
// in the open-file limit (PlanFiles; the error wraps ErrFileBudget), nothing changes and the
// old config keeps serving. f is not modified: caps left unset are resolved in a copy.
func (g *Gateway) Apply(f *Config) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining.Load() {
		return ErrShutdown
	}
	if err := g.startEngineLocked(f.Relay); err != nil {
		g.recordFailedLocked()
		return err
	}
	f, err := g.planFilesLocked(f)
	if err != nil {
		g.recordFailedLocked()
		return err
	}
	bound, err := g.bindNew(f)
	if err != nil {
		g.recordFailedLocked()
		return err
	}
	for _, lc := range f.Listeners {
		if !lc.RoutesFromXDS() {
			// Its built clusters hold endpoint states this snapshot forgets; rebuild them if
			// the listener takes routes from xds again.
			for _, dc := range g.dynamic[lc.Name] {
				dc.c = nil
			}
		}
	}
	g.cfg = f
	g.swapLocked()
	g.m.maxConns.Reset()
	for _, lc := range f.Listeners {
		g.m.maxConns.WithLabelValues(lc.Name, "listener").Set(float64(lc.MaxConnections))
		g.m.maxConns.WithLabelValues(lc.Name, "source").Set(float64(lc.MaxConnectionsPerSource))
	}
	keep := map[string]bool{}
	for _, lc := range f.Listeners {
		keep[lc.Name] = true
	}
	for name, l := range g.listeners {
		if _, moved := bound[name]; moved || !keep[name] {
			l.close()
			delete(g.listeners, name)
		}
	}
	for name, l := range bound {
		g.listeners[name] = l
		g.serve(l)
	}
	for _, lc := range f.Listeners {
		g.m.initListener(lc.Name)
	}
	g.m.reloads.WithLabelValues(ReloadOK).Inc()
	g.m.configApplied(true, g.now())
	g.ready.Store(true)
	return nil
}

// swapLocked builds a snapshot from the serving config and the dynamic clusters and makes it
// serve new connections. g.mu is held.
func (g *Gateway) swapLocked() {
	g.version++
	s := buildSnapshot(g.cfg, g.dynamic, &g.states, g.version, g.now())
	g.snap.Store(s)
	g.pending.Store(xdsPending(g.cfg, g.dynamic))
	g.m.snapshotVer.Set(float64(s.Version))
	g.m.snapshotAt.Set(float64(s.Built.Unix()))
	g.routed = g.m.routedSeries(g.routed, s, g.clusterConns.copy())
}

// bindNew binds every listener of f that is not already bound at the same address. On error it
// closes what it bound.
func (g *Gateway) bindNew(f *Config) (map[string]*listener, error) {
	bound := map[string]*listener{}
	for _, lc := range f.Listeners {
		if old := g.listeners[lc.Name]; old != nil && old.address == lc.Address {
			continue
		}
		ln, err := listenConfig.Listen(context.Background(), "tcp", lc.Address)
		if err != nil {
			for _, l := range bound {
				l.close()
			}
			return nil, fmt.Errorf("dataplane: listener %q: %w", lc.Name, err)
		}
		bound[lc.Name] = &listener{g: g, name: lc.Name, address: lc.Address, ln: ln.(*net.TCPListener),
			series: g.m.listenerSeries(lc.Name)}
	}
	return bound, nil
}

// RecordConfigError counts a configuration that was refused before it reached Apply (it did not
// parse or validate); the serving config is unchanged.
func (g *Gateway) RecordConfigError() { g.recordFailedLocked() }

// RecordRestartRequired counts a reload that was applied but changed keys only a restart
// applies (ewgate_config_reloads_total{result="restart_required"}, besides its "ok").
func (g *Gateway) RecordRestartRequired() { g.m.reloads.WithLabelValues(ReloadRestartRequired).Inc() }

// recordFailedLocked counts a refused configuration (the metrics need no lock; Apply holds g.mu).
func (g *Gateway) recordFailedLocked() {
	g.m.reloads.WithLabelValues(ReloadFailed).Inc()
	g.m.configApplied(false, g.now())
}

// Snapshot returns the route snapshot serving new connections (nil before the first Apply).
func (g *Gateway) Snapshot() *Snapshot { return g.snap.Load() }

// Addr returns the bound address of the named listener, or nil.
func (g *Gateway) Addr(name string) net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	if l := g.listeners[name]; l != nil {
		return l.ln.Addr()
	}
	return nil
}

// Ready reports whether a config is serving, every routes_from: xds listener has had its first
// table (SetMeshClusters), and the gateway is not draining.
func (g *Gateway) Ready() bool { return g.ready.Load() && !g.pending.Load() && !g.draining.Load() }

// ActiveConnections is the number of connections open now, across listeners.
func (g *Gateway) ActiveConnections() int {
	g.connsMu.Lock()
	defer g.connsMu.Unlock()
	return len(g.conns)
}

// Shutdown stops accepting (readiness turns false first), waits for open connections to end
// until ctx is done, then closes the rest, and returns when every goroutine has exited. It
// returns ctx.Err() when connections had to be cut.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.StopAccepting()
	err := g.waitIdle(ctx)
	if err != nil {
		g.connsMu.Lock()
		g.cutting.Store(true)
		for c := range g.conns {
			c.cut()
		}
		g.connsMu.Unlock()
	}
	g.wg.Wait()
	if e := g.epoll.Load(); e != nil {
		e.Close() // every pair has ended: their handlers were in g.wg
	}
	return err
}

// StopAccepting turns readiness false and closes every listener: new connections are refused
// while open ones go on, and Apply is refused from here on. Shutdown does it first; a caller
// that stops other components as well calls it before any of them drains, so that nothing is
// ready or accepting while they do.
func (g *Gateway) StopAccepting() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.draining.Store(true)
	for name, l := range g.listeners {
		l.close()
		delete(g.listeners, name)
	}
}

// waitIdle polls until no connection is open or ctx ends. Polling (every 10-500 ms, like
// net/http's Shutdown) keeps the per-connection path free of any wake-up bookkeeping.
func (g *Gateway) waitIdle(ctx context.Context) error {
	tick := 10 * time.Millisecond
	for {
		if g.ActiveConnections() == 0 {
			return nil
		}
		t := time.NewTimer(tick)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		tick = min(tick*2, 500*time.Millisecond)
	}
}

func (g *Gateway) track(c *conn) {
	g.connsMu.Lock()
	g.conns[c] = struct{}{}
	g.connsMu.Unlock()
}

func (g *Gateway) untrack(c *conn) {
	g.connsMu.Lock()
	delete(g.conns, c)
	g.connsMu.Unlock()
}
