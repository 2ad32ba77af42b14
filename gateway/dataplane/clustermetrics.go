package dataplane

import (
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// clusterConns counts the open relayed connections (an endpoint connected) per listener and
// cluster. A pair at zero is forgotten, so a cluster removed from the routes leaves no series
// once its last connection ends.
type clusterConns struct {
	mu sync.Mutex
	m  map[listenerCluster]int64
}

type listenerCluster struct{ listener, cluster string }

func (cc *clusterConns) add(listener, cluster string, n int64) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.m == nil {
		cc.m = map[listenerCluster]int64{}
	}
	k := listenerCluster{listener, cluster}
	if v := cc.m[k] + n; v != 0 {
		cc.m[k] = v
	} else {
		delete(cc.m, k)
	}
}

func (cc *clusterConns) copy() map[listenerCluster]int64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	out := make(map[listenerCluster]int64, len(cc.m))
	for k, v := range cc.m {
		out[k] = v
	}
	return out
}

var (
	descClusterOpen = prometheus.NewDesc("ewgate_cluster_open_connections",
		"Connections relayed to an endpoint of the cluster now, by listener and cluster: every cluster of the serving routes, and a removed one while it still has connections.",
		[]string{"listener", "cluster"}, nil)
	descClusterEndpoints = prometheus.NewDesc("ewgate_cluster_endpoints",
		"Endpoints of the cluster in the serving routes, by listener and cluster.",
		[]string{"listener", "cluster"}, nil)
	descClusterHealthy = prometheus.NewDesc("ewgate_cluster_healthy_endpoints",
		"Endpoints of the cluster in the serving routes that are not ejected by passive health checking now, by listener and cluster.",
		[]string{"listener", "cluster"}, nil)
)

// clusterCollector reads the per-cluster series from the serving snapshot at each scrape, so
// they follow every reload and xDS push and a cluster that is gone has no series (bounded by
// the routes).
type clusterCollector struct{ g *Gateway }

func (cc *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descClusterOpen
	ch <- descClusterEndpoints
	ch <- descClusterHealthy
}

func (cc *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	open := cc.g.clusterConns.copy()
	s := cc.g.snap.Load()
	if s != nil {
		now := cc.g.now().UnixNano()
		for _, name := range s.listenerNames() {
			for _, c := range s.tables[name].clusters() {
				healthy := 0
				for _, e := range c.Endpoints {
					if !e.state.ejected(now) {
						healthy++
					}
				}
				k := listenerCluster{name, c.Name}
				ch <- prometheus.MustNewConstMetric(descClusterEndpoints, prometheus.GaugeValue, float64(len(c.Endpoints)), name, c.Name)
				ch <- prometheus.MustNewConstMetric(descClusterHealthy, prometheus.GaugeValue, float64(healthy), name, c.Name)
				ch <- prometheus.MustNewConstMetric(descClusterOpen, prometheus.GaugeValue, float64(open[k]), name, c.Name)
				delete(open, k)
			}
		}
	}
	for k, v := range open { // clusters no longer routed, still draining
		ch <- prometheus.MustNewConstMetric(descClusterOpen, prometheus.GaugeValue, float64(v), k.listener, k.cluster)
	}
}

// listenerNames returns the snapshot's listeners, sorted.
func (s *Snapshot) listenerNames() []string {
	names := make([]string, 0, len(s.tables))
	for n := range s.tables {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// clusters returns the table's distinct clusters by name (a cluster routed by several names
// once: two series with the same labels would fail the whole scrape).
func (t *Table) clusters() []*Cluster {
	seen := map[string]bool{}
	var out []*Cluster
	add := func(c *Cluster) {
		if c != nil && !seen[c.Name] {
			seen[c.Name] = true
			out = append(out, c)
		}
	}
	for _, c := range t.exact {
		add(c)
	}
	for _, w := range t.wildcards {
		add(w.cluster)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
