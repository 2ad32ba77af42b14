package gateway

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/registrar"
)

// The VM side's health. A store that refuses writes at start (a full disk under
// control_plane.workload_entries_dir, an API server out of reach) used to stop the whole
// gateway, mesh listener included. Now the data plane comes up and serves, the VM side reports
// itself degraded (GET /healthz/control 503, ewgate_control_ready 0, an error log line saying
// what to do) and the groups are retried with backoff until the store takes them.

// Group sync retry backoff: doubled after each failure up to the maximum.
const (
	groupRetryInitial = 250 * time.Millisecond
	groupRetryMax     = 5 * time.Second
	groupLogEvery     = 12 // failures between two log lines once degraded (about a minute at the maximum)
)

// controlHealth is the readiness of the VM control endpoint (port 15012) and what it needs.
type controlHealth struct {
	configured atomic.Bool  // the config has a control: section
	started    atomic.Bool  // its parts run
	groupsDown atomic.Int32 // stores whose workload groups are not written (0 without a registrar)
	ready      prometheus.Gauge
	failures   prometheus.Counter
	setMu      sync.Mutex // orders set's change-then-publish: group syncs of several stores run at once
}

func newControlHealth(reg prometheus.Registerer) *controlHealth {
	h := &controlHealth{
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_control_ready",
			Help: "1 when the VM control endpoint serves with its workload groups in the store; 0 when not configured, starting, draining or degraded (see GET /healthz/control).",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ewgate_control_group_sync_failures_total",
			Help: "Attempts to write the config's workload groups to the registrar's store that failed (each is retried with backoff).",
		}),
	}
	reg.MustRegister(h.ready, h.failures)
	return h
}

func (h *controlHealth) set(f func(h *controlHealth)) {
	h.setMu.Lock()
	defer h.setMu.Unlock()
	f(h)
	v := 0.0
	if h.configured.Load() && h.started.Load() && h.groupsDown.Load() == 0 {
		v = 1
	}
	h.ready.Set(v)
}

// pages is the status check beyond /healthz/ready: GET /healthz/control, 200 while the VM side
// serves, 503 while it starts, drains or is degraded, 404 without a control endpoint. The body
// never says more than the state: the status port may be public.
func (h *controlHealth) pages(dp *dataplane.Gateway) map[string]http.Handler {
	return map[string]http.Handler{
		"GET /healthz/control": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			code, state := h.state(dp)
			if code != http.StatusOK {
				http.Error(w, state, code)
				return
			}
			w.Write([]byte("ok\n"))
		}),
	}
}

// state is the VM side's state as /healthz/control answers it (the status page shows it too).
func (h *controlHealth) state(dp *dataplane.Gateway) (int, string) {
	switch {
	case !h.configured.Load():
		return http.StatusNotFound, "no control endpoint configured"
	case !h.started.Load() || !dp.Ready():
		return http.StatusServiceUnavailable, "not ready"
	case h.groupsDown.Load() > 0:
		return http.StatusServiceUnavailable, "degraded: workload groups not in the store (see the log)"
	}
	return http.StatusOK, "ready"
}

// groupSync keeps the store's workload groups equal to the config's and retries while the
// store refuses them.
type groupSync struct {
	res    registrar.Resource[*registrar.WorkloadGroup]
	store  string // where the store is, for the log
	log    *zap.Logger
	health *controlHealth
	kick   chan struct{} // a failed update asks run for retries
	down   bool          // the last attempt failed (counted in health.groupsDown); guarded by mu

	mu       sync.Mutex // one sync at a time; guards the fields below
	want     []*registrar.WorkloadGroup
	failures int
	since    time.Time // first failure of the current run of failures
}

func newGroupSync(res registrar.Resource[*registrar.WorkloadGroup], store string, log *zap.Logger, h *controlHealth) *groupSync {
	return &groupSync{res: res, store: store, log: log, health: h, kick: make(chan struct{}, 1)}
}

// update makes groups the wanted ones and writes them now; on failure run retries them.
func (g *groupSync) update(ctx context.Context, groups []*registrar.WorkloadGroup) error {
	g.mu.Lock()
	g.want = groups
	err := g.syncLocked(ctx)
	g.mu.Unlock()
	if err != nil {
		select {
		case g.kick <- struct{}{}:
		default:
		}
	}
	return err
}

func (g *groupSync) syncLocked(ctx context.Context) error {
	err := registrar.SyncGroups(ctx, g.res, g.want)
	if err == nil {
		if g.failures > 0 {
			g.log.Info("VM control side recovered: workload groups written to the store", zap.String("store", g.store),
				zap.Int("failed_attempts", g.failures), zap.Duration("degraded_for", time.Since(g.since)))
		}
		g.failures = 0
		if g.down {
			g.down = false
			g.health.set(func(h *controlHealth) { h.groupsDown.Add(-1) })
		}
		return nil
	}
	if g.failures == 0 {
		g.since = time.Now()
	}
	g.failures++
	g.health.failures.Inc()
	if !g.down {
		g.down = true
		g.health.set(func(h *controlHealth) { h.groupsDown.Add(1) })
	}
	if g.failures == 1 || g.failures%groupLogEvery == 0 {
		g.log.Error("VM control side degraded: the workload groups could not be written to the store; "+
			"the mesh listeners serve on, VMs of groups not yet in the store cannot register. "+
			"Free space on the store's volume (or restore access to the API server); ewgate retries with backoff and recovers by itself",
			zap.String("store", g.store), zap.Int("failed_attempts", g.failures), zap.Error(err))
	}
	return fmt.Errorf("workload_groups: %w", err)
}

// run retries failed syncs with backoff until one succeeds, and again after each failed update,
// until ctx ends.
func (g *groupSync) run(ctx context.Context) error {
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	backoff := groupRetryInitial
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-g.kick:
			backoff = groupRetryInitial
			t.Reset(backoff)
			continue
		case <-t.C:
		}
		g.mu.Lock()
		err := g.syncLocked(ctx)
		g.mu.Unlock()
		if err != nil {
			backoff = min(2*backoff, groupRetryMax)
			t.Reset(backoff)
		}
	}
}
