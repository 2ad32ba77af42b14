package dataplane

import (
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Status is the data plane summed up for the status page and `ewgate status` (GET
// /debug/status). It is computed from the same view as GET /debug/routes, so the two never
// disagree, and from the connection counters /metrics exports.
type Status struct {
	Ready           bool             `json:"ready"`
	SnapshotVersion uint64           `json:"snapshot_version"`
	SnapshotBuilt   time.Time        `json:"snapshot_built,omitzero"`
	Listeners       []ListenerStatus `json:"listeners"`
	Clusters        []ClusterStatus  `json:"clusters"`
	Ejected         []EjectedStatus  `json:"ejected"`  // endpoints out of rotation now
	Refusals        []Refusal        `json:"refusals"` // connections refused or cut, by listener and reason
}

// ListenerStatus is one listener: its settings, its load and the size of its route table.
type ListenerStatus struct {
	Name                    string `json:"name"`
	Kind                    string `json:"kind"`
	Address                 string `json:"address"` // bound; empty while not listening
	RoutesFrom              string `json:"routes_from,omitempty"`
	MaxConnections          int    `json:"max_connections"`
	MaxConnectionsPerSource int    `json:"max_connections_per_source"`
	Active                  int64  `json:"active_connections"`
	Routes                  int    `json:"routes"`
	Endpoints               int    `json:"endpoints"`
}

// ClusterStatus is one routed cluster of a listener: its endpoints' health and load.
type ClusterStatus struct {
	Listener  string `json:"listener"`
	Name      string `json:"name"`
	Routes    int    `json:"routes"` // matches routed to it (an ingress cluster may have several hosts)
	Endpoints int    `json:"endpoints"`
	Ejected   int    `json:"ejected"` // out of rotation now (passive health checking)
	Active    int64  `json:"active_connections"`
}

// EjectedStatus is one endpoint that passive health checking has taken out of rotation.
type EjectedStatus struct {
	Listener string    `json:"listener"`
	Cluster  string    `json:"cluster"`
	Address  string    `json:"address"`
	Locality string    `json:"locality,omitempty"`
	Until    time.Time `json:"until"`
}

// Refusal counts the connections of a listener that ended with one result other than ok.
type Refusal struct {
	Listener string `json:"listener"`
	Reason   string `json:"reason"`
	Count    uint64 `json:"count"`
}

// Status returns the data plane's state now.
func (g *Gateway) Status() Status {
	v := g.RoutesView()
	st := Status{Ready: g.Ready(), SnapshotVersion: v.Version, SnapshotBuilt: v.Built,
		Listeners: []ListenerStatus{}, Clusters: []ClusterStatus{}, Ejected: []EjectedStatus{}, Refusals: g.refusalCounts()}
	for name, lv := range v.Listeners {
		ls := ListenerStatus{Name: name, Kind: lv.Kind, Address: lv.Address, RoutesFrom: lv.RoutesFrom,
			MaxConnections: lv.MaxConnections, MaxConnectionsPerSource: lv.MaxConnectionsPerSource,
			Active: lv.Active, Routes: len(lv.Routes)}
		byCluster := map[string]*ClusterStatus{}
		for _, r := range lv.Routes {
			cs := byCluster[r.Cluster]
			if cs == nil {
				// A cluster routed by several matches is one set of endpoints: counted once.
				cs = &ClusterStatus{Listener: name, Name: r.Cluster, Endpoints: len(r.Endpoints), Active: r.Active}
				for _, e := range r.Endpoints {
					if e.EjectedUntil != nil {
						cs.Ejected++
						st.Ejected = append(st.Ejected, EjectedStatus{Listener: name, Cluster: r.Cluster, Address: e.Address,
							Locality: e.Locality, Until: *e.EjectedUntil})
					}
				}
				byCluster[r.Cluster] = cs
				ls.Endpoints += cs.Endpoints
			}
			cs.Routes++
		}
		for _, cs := range byCluster {
			st.Clusters = append(st.Clusters, *cs)
		}
		st.Listeners = append(st.Listeners, ls)
	}
	sort.Slice(st.Listeners, func(i, j int) bool { return st.Listeners[i].Name < st.Listeners[j].Name })
	sort.Slice(st.Clusters, func(i, j int) bool {
		a, b := st.Clusters[i], st.Clusters[j]
		return a.Listener < b.Listener || a.Listener == b.Listener && a.Name < b.Name
	})
	sort.Slice(st.Ejected, func(i, j int) bool { return st.Ejected[i].Until.Before(st.Ejected[j].Until) })
	return st
}

// refusalCounts reads ewgate_connections_total: every (listener, result) but ok, summed over
// clusters, largest first.
func (g *Gateway) refusalCounts() []Refusal {
	ch := make(chan prometheus.Metric, 64)
	go func() { g.m.conns.Collect(ch); close(ch) }()
	sums := map[[2]string]float64{}
	for m := range ch {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue
		}
		var listener, result string
		for _, lp := range pb.GetLabel() {
			switch lp.GetName() {
			case "listener":
				listener = lp.GetValue()
			case "result":
				result = lp.GetValue()
			}
		}
		if result != resultOK && pb.GetCounter().GetValue() > 0 {
			sums[[2]string{listener, result}] += pb.GetCounter().GetValue()
		}
	}
	out := []Refusal{}
	for k, n := range sums {
		out = append(out, Refusal{Listener: k[0], Reason: k[1], Count: uint64(n)})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		return a.Listener+"\x00"+a.Reason < b.Listener+"\x00"+b.Reason
	})
	return out
}
