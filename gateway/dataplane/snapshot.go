package dataplane

import (
	"errors"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ewgate/ewgate/sni"
)

// Routing decisions, as sentinels; the connection handler turns them into a metric label,
// a log reason and a TLS alert.
var (
	ErrNoRoute       = errors.New("dataplane: no route for this server name")
	ErrNotIstioName  = errors.New("dataplane: server name is not an Istio outbound_ cluster name")
	ErrNoIstioALPN   = errors.New("dataplane: client offers none of Istio's mTLS ALPN protocols")
	ErrMeshOnIngress = errors.New("dataplane: mesh-internal name refused on an ingress listener")
)

// Snapshot is an immutable set of route tables, one per listener. A new snapshot replaces the
// old one atomically; connections already routed keep the cluster they were given.
type Snapshot struct {
	Version uint64
	Built   time.Time
	tables  map[string]*Table
}

// Table returns the route table of the named listener, or nil.
func (s *Snapshot) Table(listener string) *Table { return s.tables[listener] }

// Table is one listener's settings and routes.
type Table struct {
	Listener   Listener
	requireALP bool
	export     *exportList         // mesh: the hosts exported; nil: every host
	proxies    []netip.Prefix      // trusted PROXY protocol senders
	exact      map[string]*Cluster // SNI -> cluster (mesh: cluster names; ingress: exact hosts)
	wildcards  []wildcard          // ingress: longest suffix first
}

type wildcard struct {
	pattern string // *.example.com
	cluster *Cluster
}

// Cluster is a routed destination: its endpoints and how to pick among them.
type Cluster struct {
	Name      string
	Config    ClusterConfig
	Endpoints []*Endpoint
	lb        balancer
	alpn      []string                  // from an xDS filter chain: the client must offer one of these
	hello     atomic.Pointer[sni.Hello] // shared by the connections whose hellos say the same (share)
}

// share returns h, or an equal hello an earlier connection routed here keeps. A connection keeps
// its hello until it ends, for its log line, and a mesh's sidecars all send a cluster the same
// name and protocols: idle connections then hold one copy between them, not about 150 bytes
// each. A different hello (another client's protocols) becomes the one shared next.
func (c *Cluster) share(h *sni.Hello) *sni.Hello {
	if last := c.hello.Load(); last != nil && last.ServerName == h.ServerName && slices.Equal(last.ALPN, h.ALPN) {
		return last
	}
	c.hello.Store(h)
	return h
}

// Route returns the cluster for a ClientHello from client on this table's listener, or the
// reason there is none. It never looks at another listener's routes.
func (t *Table) Route(h *sni.Hello, client netip.Addr) (*Cluster, error) {
	if t.Listener.Kind == KindMesh {
		return t.routeMesh(h, client)
	}
	return t.routeIngress(h)
}

func (t *Table) routeMesh(h *sni.Hello, client netip.Addr) (*Cluster, error) {
	// Only outbound_ names are ever routed: inbound_ parses but would let a remote client pick
	// a local workload port directly (Istio's AUTO_PASSTHROUGH routes outbound clusters only).
	n, err := sni.ParseIstioName(h.ServerName)
	if err != nil || n.Direction != sni.Outbound {
		return nil, ErrNotIstioName
	}
	if t.requireALP && !sni.HasIstioALPN(h.ALPN) {
		return nil, ErrNoIstioALPN
	}
	// Before the lookup: a host outside the allow-list is refused the same way whether or not
	// the route source publishes it.
	if !t.export.allows(n.Host, client) {
		return nil, ErrNotExported
	}
	c := t.exact[h.ServerName]
	if c == nil {
		return nil, ErrNoRoute
	}
	if len(c.alpn) > 0 && !offersAny(h.ALPN, c.alpn) {
		return nil, ErrNoIstioALPN
	}
	return c, nil
}

func (t *Table) routeIngress(h *sni.Hello) (*Cluster, error) {
	if _, err := sni.ParseIstioName(h.ServerName); err == nil {
		return nil, ErrMeshOnIngress
	}
	if t.Listener.MeshDomainOf(h.ServerName) != "" {
		return nil, ErrMeshOnIngress
	}
	if c := t.exact[h.ServerName]; c != nil {
		return c, nil
	}
	for _, w := range t.wildcards {
		if sni.MatchHost(w.pattern, h.ServerName) {
			return w.cluster, nil
		}
	}
	return nil, ErrNoRoute
}

func offersAny(offered, want []string) bool {
	for _, o := range offered {
		for _, w := range want {
			if o == w {
				return true
			}
		}
	}
	return false
}

// trustsProxy reports whether a connection from a must start with a PROXY protocol header.
func (t *Table) trustsProxy(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// buildSnapshot turns a validated config and the clusters route sources set for its
// routes_from: xds listeners into a snapshot. st carries endpoint health across snapshots; it
// may be shared by successive builds.
func buildSnapshot(f *Config, dyn map[string]map[string]*dynamicCluster, st *states, version uint64, now time.Time) *Snapshot {
	var keys []stateKey
	for _, c := range f.Clusters {
		for _, e := range c.Endpoints {
			keys = append(keys, stateKey{c.Name, e.Address})
		}
	}
	keys = append(keys, dynamicStateKeys(f, dyn)...)
	kept := st.retain(keys)
	clusters := map[string]*Cluster{}
	for _, cc := range f.Clusters {
		c := &Cluster{Name: strings.ToLower(cc.Name), Config: cc}
		for _, e := range cc.Endpoints {
			c.Endpoints = append(c.Endpoints, &Endpoint{Address: e.Address, Weight: e.Weight, state: kept[stateKey{cc.Name, e.Address}]})
		}
		c.lb = newBalancer(cc.LBPolicy, c.Endpoints)
		clusters[cc.Name] = c
	}
	s := &Snapshot{Version: version, Built: now, tables: map[string]*Table{}}
	for _, l := range f.Listeners {
		t := &Table{Listener: l, exact: map[string]*Cluster{}, requireALP: BoolOr(l.RequireIstioALPN, true), export: newExportList(l.Export)}
		if l.ProxyProtocol != nil {
			for _, c := range l.ProxyProtocol.TrustedCIDRs {
				t.proxies = append(t.proxies, netip.MustParsePrefix(c)) // validated at load
			}
		}
		if l.RoutesFromXDS() {
			addDynamic(t, dyn[l.Name], kept)
		} else if l.Kind == KindMesh {
			for _, c := range clusters {
				if c.Config.Listener == l.Name {
					t.exact[c.Name] = c
				}
			}
		}
		for _, r := range l.Routes {
			for _, h := range r.Hosts {
				h = strings.ToLower(strings.TrimSuffix(h, "."))
				if strings.HasPrefix(h, "*.") {
					t.wildcards = append(t.wildcards, wildcard{h, clusters[r.Cluster]})
				} else {
					t.exact[h] = clusters[r.Cluster]
				}
			}
		}
		sort.SliceStable(t.wildcards, func(i, j int) bool { return len(t.wildcards[i].pattern) > len(t.wildcards[j].pattern) })
		s.tables[l.Name] = t
	}
	return s
}
