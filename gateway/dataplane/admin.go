package dataplane

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The admin HTTP servers, split as Istio and Envoy split them (docs/operations.md "Health and
// metrics"): StatusHandler for the port a load balancer may publish (readiness only),
// MetricsHandler for Prometheus, AdminHandler for people, on loopback.

// StatusHandler serves readiness and nothing else: GET /healthz/ready (200 while serving, 503
// before the first config and while draining) and the extra checks (path -> handler, e.g. GET
// /healthz/control). Every other path is 404: nothing a load balancer publishes may show a
// route, an endpoint or a counter.
func (g *Gateway) StatusHandler(extra map[string]http.Handler) http.Handler {
	mux := http.NewServeMux()
	g.statusRoutes(mux, extra)
	return mux
}

func (g *Gateway) statusRoutes(mux *http.ServeMux, extra map[string]http.Handler) {
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !g.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	for path, h := range extra {
		mux.Handle(path, h)
	}
}

// MetricsHandler serves GET /metrics (Prometheus text) and nothing else.
func MetricsHandler(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	return mux
}

// AdminHandler serves every admin page, for the debug address on loopback: GET /healthz/ready,
// /metrics, /debug/routes (the live route tables as JSON) and, with withPprof, /debug/pprof/.
// extra mounts more handlers (other parts of ewgate add their /debug pages and the status
// checks they give StatusHandler).
func (g *Gateway) AdminHandler(gatherer prometheus.Gatherer, withPprof bool, extra map[string]http.Handler) http.Handler {
	mux := http.NewServeMux()
	g.statusRoutes(mux, nil)
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /debug/routes", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(g.RoutesView())
	})
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	for path, h := range extra {
		mux.Handle(path, h)
	}
	return mux
}

// NewAdminServer wraps an admin handler in an http.Server with the timeouts every admin server
// has; the gateway serves it behind its admin connection caps.
func NewAdminServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      2 * time.Minute, // a CPU profile takes 30 s by default
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
}

// RoutesView is GET /debug/routes: every listener's route table as it serves new connections,
// with each endpoint's load and ejection (`ewgate routes` prints it).
type RoutesView struct {
	Version   uint64                    `json:"version"`
	Built     time.Time                 `json:"built"`
	Listeners map[string]ListenerRoutes `json:"listeners"`
}

// ListenerRoutes is one listener of RoutesView: its settings, load and routes.
type ListenerRoutes struct {
	Kind                    string       `json:"kind"`
	Address                 string       `json:"address,omitempty"` // bound (empty while not listening)
	RoutesFrom              string       `json:"routes_from,omitempty"`
	MaxConnections          int          `json:"max_connections"`
	MaxConnectionsPerSource int          `json:"max_connections_per_source"`
	Active                  int64        `json:"active_connections"`
	Export                  []ExportRule `json:"export,omitempty"` // the allow-list; none: every route is served
	Routes                  []RouteView  `json:"routes"`
}

// RouteView is one match (SNI or host pattern) and its cluster.
type RouteView struct {
	Match   string `json:"match"`
	Cluster string `json:"cluster"`
	Policy  string `json:"lb_policy"`
	Active  int64  `json:"active_connections"` // the endpoints' sum
	// PriorityLoad is the percent of new connections each priority takes now (Envoy's priority
	// load); absent when the cluster has one priority and no locality weighting.
	PriorityLoad map[uint32]uint32 `json:"priority_load,omitempty"`
	Endpoints    []EndpointView    `json:"endpoints"`
}

// EndpointView is one endpoint of a RouteView's cluster.
type EndpointView struct {
	Address      string     `json:"address"`
	Weight       uint32     `json:"weight"`
	Locality     string     `json:"locality,omitempty"`
	Network      string     `json:"network,omitempty"`
	Priority     uint32     `json:"priority"`
	Active       int64      `json:"active_connections"`
	EjectedUntil *time.Time `json:"ejected_until,omitempty"`
}

// RoutesView returns the serving route tables (empty before the first config).
func (g *Gateway) RoutesView() RoutesView {
	s := g.snap.Load()
	if s == nil {
		return RoutesView{}
	}
	v := RoutesView{Version: s.Version, Built: s.Built, Listeners: map[string]ListenerRoutes{}}
	now := g.now().UnixNano()
	bound := g.boundListeners()
	for name, t := range s.tables {
		lc := t.Listener
		lv := ListenerRoutes{Kind: lc.Kind, RoutesFrom: lc.RoutesFrom, MaxConnections: lc.MaxConnections,
			MaxConnectionsPerSource: lc.MaxConnectionsPerSource, Export: lc.Export, Routes: []RouteView{}}
		if l := bound[name]; l != nil {
			lv.Address, lv.Active = l.ln.Addr().String(), l.active.Load()
		}
		for match, c := range t.exact {
			lv.Routes = append(lv.Routes, clusterView(match, c, now))
		}
		for _, w := range t.wildcards {
			lv.Routes = append(lv.Routes, clusterView(w.pattern, w.cluster, now))
		}
		sort.Slice(lv.Routes, func(i, j int) bool { return lv.Routes[i].Match < lv.Routes[j].Match })
		v.Listeners[name] = lv
	}
	return v
}

func clusterView(match string, c *Cluster, now int64) RouteView {
	rv := RouteView{Match: match, Cluster: c.Name, Policy: c.Config.LBPolicy}
	if p, ok := c.lb.(*prioritized); ok {
		rv.PriorityLoad = p.priorityLoads(now)
	}
	for _, e := range c.Endpoints {
		ev := EndpointView{Address: e.Address, Weight: e.Weight, Locality: e.Locality, Network: e.Network,
			Priority: e.Priority, Active: e.state.active.Load()}
		rv.Active += ev.Active
		if until := e.state.ejectedUntil.Load(); until > now {
			t := time.Unix(0, until).UTC()
			ev.EjectedUntil = &t
		}
		rv.Endpoints = append(rv.Endpoints, ev)
	}
	return rv
}

// boundListeners is a copy of the bound listeners by name.
func (g *Gateway) boundListeners() map[string]*listener {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]*listener, len(g.listeners))
	for name, l := range g.listeners {
		out[name] = l
	}
	return out
}
