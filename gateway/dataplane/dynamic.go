package dataplane

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/sni"
)

// Errors of SetMeshClusters: the whole call was refused and nothing changed.
var (
	ErrUnknownListener = errors.New("dataplane: no such listener in the serving config")
	ErrNotXDSListener  = errors.New("dataplane: listener does not take its routes from xds (routes_from: xds)")
)

// ClusterSpec is a mesh cluster handed to the gateway by a route source other than the file (the
// xDS client). The zero value of every optional field means the default of a file cluster.
type ClusterSpec struct {
	// Name is the Istio SNI that reaches the cluster: outbound_.<port>_.<subset>_.<host>.
	Name string
	// LBPolicy is round_robin (when empty), least_conn or maglev.
	LBPolicy string
	// ConnectTimeout per endpoint attempt; zero: the file default (5s).
	ConnectTimeout time.Duration
	// ALPN is the filter chain's application_protocols: when not empty the client must offer
	// one of them (as Envoy's filter chain match requires). Empty: only the listener's rule.
	ALPN []string
	// OverprovisioningFactor is Envoy's, in percent: a priority level keeps its whole share of
	// the load while overprovisioning × healthy / total >= 100. Zero: 140.
	OverprovisioningFactor uint32
	// LocalityWeighted: within a priority, choose a locality by its LocalityWeight × health
	// first (Envoy's locality_weighted_lb_config). False: the priority's endpoints as one set.
	LocalityWeighted bool
	// OutlierDetection from the route source; nil: the file default for mesh clusters.
	OutlierDetection *OutlierDetection
	Endpoints        []EndpointSpec
}

// EndpointSpec is one upstream address of a ClusterSpec.
type EndpointSpec struct {
	Address  string // host:port
	Weight   uint32 // zero: 1
	Locality string // region/zone/subzone; shown in /debug/routes
	Network  string // shown in /debug/routes
	// Priority: 0 takes the load while healthy, then 1, and so on (Envoy's priority levels).
	Priority uint32
	// LocalityWeight is the load-balancing weight of the endpoint's locality (the same for
	// every endpoint of a locality and priority); used when the cluster is LocalityWeighted.
	LocalityWeight uint32
}

// dynamicMetrics count what route sources hand in that the gateway could not use as given.
type dynamicMetrics struct {
	problems *prometheus.CounterVec // listener, reason
	sets     *prometheus.CounterVec // listener
}

func newDynamicMetrics(reg prometheus.Registerer) *dynamicMetrics {
	m := &dynamicMetrics{
		problems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_dynamic_route_problems_total",
			Help: "Clusters or endpoints from a route source (xDS) that were skipped or merged, by listener and reason (duplicate_cluster, invalid_name, invalid_endpoint, duplicate_endpoint, invalid_lb_policy).",
		}, []string{"listener", "reason"}),
		sets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_dynamic_route_updates_total", Help: "Route tables replaced by a route source (xDS), by listener.",
		}, []string{"listener"}),
	}
	if reg != nil {
		reg.MustRegister(m.problems, m.sets)
	}
	return m
}

// dynamicCluster is a built cluster and the spec it came from; an unchanged spec reuses the
// built cluster (and its balancer: a maglev table is 65537 slots) in the next snapshot.
type dynamicCluster struct {
	spec ClusterSpec
	c    *Cluster
}

// SetMeshClusters replaces the clusters of a mesh listener whose config says routes_from: xds,
// and swaps in a new snapshot; connections already routed keep their cluster. Problems in the
// specs never refuse the table: a cluster whose name is not an Istio outbound_ name, or that is
// listed again, is skipped, an endpoint that is not host:port is skipped, a second listing of an
// address is merged; each is logged and counted in ewgate_dynamic_route_problems_total. The
// listener turns ready once it has had its first table.
func (g *Gateway) SetMeshClusters(listener string, specs []ClusterSpec) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining.Load() {
		return ErrShutdown
	}
	if g.cfg == nil {
		return fmt.Errorf("%w: %q", ErrUnknownListener, listener)
	}
	var lc *Listener
	for i := range g.cfg.Listeners {
		if g.cfg.Listeners[i].Name == listener {
			lc = &g.cfg.Listeners[i]
		}
	}
	switch {
	case lc == nil:
		return fmt.Errorf("%w: %q", ErrUnknownListener, listener)
	case !lc.RoutesFromXDS():
		return fmt.Errorf("%w: %q", ErrNotXDSListener, listener)
	}
	g.dynamic[listener] = g.buildDynamic(listener, specs, g.dynamic[listener])
	g.dm.sets.WithLabelValues(listener).Inc()
	g.swapLocked()
	return nil
}

// buildDynamic turns specs into clusters, reusing those of prev whose spec did not change.
func (g *Gateway) buildDynamic(listener string, specs []ClusterSpec, prev map[string]*dynamicCluster) map[string]*dynamicCluster {
	out := make(map[string]*dynamicCluster, len(specs))
	for _, s := range specs {
		s.Name = strings.ToLower(strings.TrimSuffix(s.Name, "."))
		if n, err := sni.ParseIstioName(s.Name); err != nil || n.Direction != sni.Outbound {
			g.routeProblem(listener, "invalid_name", s.Name, "not an Istio outbound_ cluster name; skipped")
			continue
		}
		if _, dup := out[s.Name]; dup {
			// istio#42050: Envoy refused the whole listener for one duplicate chain.
			g.routeProblem(listener, "duplicate_cluster", s.Name, "listed twice; the first listing is kept")
			continue
		}
		switch s.LBPolicy {
		case "":
			s.LBPolicy = RoundRobin
		case RoundRobin, LeastConn, Maglev:
		default:
			g.routeProblem(listener, "invalid_lb_policy", s.Name, fmt.Sprintf("lb policy %q unknown; round_robin used", s.LBPolicy))
			s.LBPolicy = RoundRobin
		}
		s.Endpoints = g.cleanEndpoints(listener, s.Name, s.Endpoints)
		if p := prev[s.Name]; p != nil && reflect.DeepEqual(p.spec, s) {
			out[s.Name] = p
			continue
		}
		out[s.Name] = &dynamicCluster{spec: s}
	}
	return out
}

func (g *Gateway) cleanEndpoints(listener, cluster string, eps []EndpointSpec) []EndpointSpec {
	out := make([]EndpointSpec, 0, len(eps))
	seen := make(map[string]int, len(eps))
	for _, e := range eps {
		if _, _, err := net.SplitHostPort(e.Address); err != nil {
			g.routeProblem(listener, "invalid_endpoint", cluster, fmt.Sprintf("endpoint %q is not host:port; skipped", e.Address))
			continue
		}
		if e.Weight == 0 {
			e.Weight = 1
		}
		if i, dup := seen[e.Address]; dup {
			g.routeProblem(listener, "duplicate_endpoint", cluster, fmt.Sprintf("endpoint %s listed twice; weights added", e.Address))
			out[i].Weight += e.Weight
			continue
		}
		seen[e.Address] = len(out)
		out = append(out, e)
	}
	return out
}

func (g *Gateway) routeProblem(listener, reason, cluster, msg string) {
	g.dm.problems.WithLabelValues(listener, reason).Inc()
	g.log.Warn("route from xds not used as given: "+msg, zap.String("listener", listener), zap.String("cluster", cluster), zap.String("reason", reason))
}

// dynamicStateKeys lists the endpoint-state keys of the dynamic clusters of listeners that take
// their routes from xds in f. The listener is part of the key: two listeners may publish the
// same cluster name without sharing health.
func dynamicStateKeys(f *Config, dyn map[string]map[string]*dynamicCluster) []stateKey {
	var keys []stateKey
	for _, l := range f.Listeners {
		if !l.RoutesFromXDS() {
			continue
		}
		for name, dc := range dyn[l.Name] {
			for _, e := range dc.spec.Endpoints {
				keys = append(keys, stateKey{l.Name + "/" + name, e.Address})
			}
		}
	}
	return keys
}

// addDynamic fills t (a routes_from: xds listener's table) with its dynamic clusters, building
// those not built yet with the endpoint states in kept.
func addDynamic(t *Table, dyn map[string]*dynamicCluster, kept map[stateKey]*endpointState) {
	for name, dc := range dyn {
		if dc.c == nil {
			dc.c = buildDynamicCluster(t.Listener.Name, dc.spec, kept)
		}
		t.exact[name] = dc.c
	}
}

func buildDynamicCluster(listener string, s ClusterSpec, kept map[stateKey]*endpointState) *Cluster {
	cc := MeshClusterDefaults(s.Name, listener)
	cc.LBPolicy = s.LBPolicy
	if s.ConnectTimeout > 0 {
		cc.ConnectTimeout = s.ConnectTimeout
	}
	if s.OutlierDetection != nil {
		od := *s.OutlierDetection
		cc.OutlierDetection = &od
		cc.SetDefaults()
	}
	c := &Cluster{Name: s.Name, Config: cc, alpn: s.ALPN}
	localityWeights := map[string]uint32{}
	for _, e := range s.Endpoints {
		cc.Endpoints = append(cc.Endpoints, EndpointConfig{Address: e.Address, Weight: e.Weight})
		c.Endpoints = append(c.Endpoints, &Endpoint{Address: e.Address, Weight: e.Weight, Priority: e.Priority,
			Locality: e.Locality, Network: e.Network, state: kept[stateKey{listener + "/" + s.Name, e.Address}]})
		localityWeights[e.Locality] = max(localityWeights[e.Locality], e.LocalityWeight)
	}
	c.Config = cc
	var gen *atomic.Uint64
	if len(c.Endpoints) > 0 {
		gen = c.Endpoints[0].state.gen
	}
	c.lb = newPrioritized(cc.LBPolicy, c.Endpoints, localityWeights, s.LocalityWeighted, s.OverprovisioningFactor, gen)
	return c
}

// xdsPending reports whether a routes_from: xds listener of f has not had its first table.
func xdsPending(f *Config, dyn map[string]map[string]*dynamicCluster) bool {
	for _, l := range f.Listeners {
		if l.RoutesFromXDS() {
			if _, ok := dyn[l.Name]; !ok {
				return true
			}
		}
	}
	return false
}
