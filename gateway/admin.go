package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/statuspage"
)

// The admin HTTP servers the config asks for (config.Admin): the debug admin with every page,
// the status server (readiness only) and the metrics server, each behind its connection caps.
// The data plane serves readiness, /metrics and /debug/routes; every other component adds its
// own pages once it runs (pages), so the admin server never reads a component that is not
// there yet.

// pages are a component's admin pages: "METHOD /path" -> handler. Debug pages go on the debug
// admin only; status pages (checks a load balancer may read) on the status server as well.
type pages struct {
	debug, status map[string]http.Handler
}

// adminServers are the running admin servers and the muxes components add their pages to.
type adminServers struct {
	debug, status *http.ServeMux // a ServeMux may be added to while it serves
	servers       []adminServer
	started       time.Time // when the admin servers started: the status page's uptime
}

type adminServer struct {
	srv  *http.Server
	done chan error
}

func (g *Gateway) startAdmin(cfg *config.File) (*adminServers, error) {
	a := cfg.Admin
	as := &adminServers{debug: http.NewServeMux(), status: http.NewServeMux(), started: time.Now()}
	as.debug.Handle("/", g.dp.AdminHandler(g.reg, a.Pprof, nil))
	as.status.Handle("/", g.dp.StatusHandler(nil))
	as.register(pages{status: g.health.pages(g.dp)})
	servers := []struct {
		name, key, addr string
		h               http.Handler
	}{
		{"admin", "admin.address", a.Address, as.debug},
		{"status", "admin.status_address", a.StatusAddress, as.status},
		{"metrics", "admin.metrics_address", a.MetricsAddress, dataplane.MetricsHandler(g.reg)},
	}
	limiter := newAdminLimiter(g.reg)
	lim := adminLimits{MaxConnections: a.MaxConnections, MaxPerSource: a.MaxConnectionsPerSource}
	for _, sv := range servers {
		if sv.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", sv.addr)
		if err != nil {
			as.close()
			return nil, fmt.Errorf("%s listener (%s): %w", sv.name, sv.key, err)
		}
		srv := dataplane.NewAdminServer(sv.h)
		s := adminServer{srv: srv, done: make(chan error, 1)}
		go func() { s.done <- srv.Serve(limiter.wrap(sv.name, ln, lim)) }() // owned: close and shutdown wait for done
		as.servers = append(as.servers, s)
		g.log.Info("listening", zap.String("listener", sv.name), zap.String("kind", sv.name), zap.Stringer("address", ln.Addr()),
			zap.Int("max_connections", lim.MaxConnections), zap.Int("max_connections_per_source", lim.MaxPerSource))
	}
	return as, nil
}

// register adds a component's pages: debug pages to the debug admin, status pages to both.
func (as *adminServers) register(p pages) {
	for pattern, h := range p.debug {
		as.debug.Handle(pattern, h)
	}
	for pattern, h := range p.status {
		as.debug.Handle(pattern, h)
		as.status.Handle(pattern, h)
	}
}

// close closes the servers at once and waits for them.
func (as *adminServers) close() {
	for _, a := range as.servers {
		a.srv.Close()
		<-a.done
	}
}

// shutdown lets each server finish its requests (5 s at most), then closes it.
func (as *adminServers) shutdown() error {
	var errs []error
	for _, a := range as.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.srv.Shutdown(ctx); err != nil {
			a.srv.Close()
		}
		cancel()
		if err := <-a.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// statusPages are the status page (GET / of the debug admin), GET /debug/status (the same
// state as JSON, read by `ewgate status`) and GET /debug/xds (the xDS client's state), from the
// components that run. Registered once they all do.
func (g *Gateway) statusPages() pages {
	p := g.components
	src := statuspage.Sources{Version: g.opts.Version, GoVersion: runtime.Version(), Started: g.admin.started, DataPlane: g.dp.Status}
	if g.health.configured.Load() {
		src.Control = func() string { _, s := g.health.state(g.dp); return s }
	}
	if p.vm.verifier != nil {
		src.Issuers = p.vm.verifier.Status
	}
	if len(p.vm.regs) > 0 {
		src.VMs = p.vm.registrations
	}
	if p.xds != nil {
		src.XDS = p.xds.Status
	}
	debug := map[string]http.Handler{
		"GET /{$}":          statuspage.Handler(src.Gather),
		"GET /debug/status": statuspage.JSONHandler(src.Gather),
	}
	if p.xds != nil {
		debug["GET /debug/xds"] = jsonPage(g.log, func() any { return p.xds.Status() })
	}
	return pages{debug: debug}
}

// jsonPage serves what get returns as indented JSON.
func jsonPage(log *zap.Logger, get func() any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(get()); err != nil {
			log.Debug("debug page", zap.Error(err))
		}
	})
}
