package controlplane

import (
	"cmp"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/sni"
)

// Labels and annotations of WorkloadEntries the model reads, as istiod reads them (docs/xds.md,
// docs/auto-registration.md).
const (
	labelTLSMode       = "security.istio.io/tlsMode"
	labelNetwork       = "topology.istio.io/network"
	annotationHealthOn = "proxy.istio.io/health-checks-enabled"
)

// endpoint is one address of one service port.
type endpoint struct {
	host     string // IP or DNS name
	port     uint32
	weight   uint32
	network  string
	locality string
	mtls     bool // Istio mTLS endpoint: only these are routed through the gateway
}

// servicePort is one host and port of a service: one Istio cluster.
type servicePort struct {
	host      string
	port      config.ServicePort
	internal  bool // MESH_INTERNAL
	endpoints []endpoint
}

// gatewayCluster is the Istio SNI name the gateway routes, outbound_.<port>_._.<host>.
func (p *servicePort) gatewayCluster() string {
	return sni.OutboundName(int(p.port.Number), "", p.host)
}

// grpcCluster is the cluster name proxyless gRPC clients get, as istiod names it.
func (p *servicePort) grpcCluster() string {
	return fmt.Sprintf("outbound|%d||%s", p.port.Number, p.host)
}

// listenerName is the API listener a proxyless client asks for: the target of xds:///<host>:<port>.
func (p *servicePort) listenerName() string {
	return net.JoinHostPort(p.host, strconv.Itoa(int(p.port.Number)))
}

// buildModel resolves every service's endpoints: its static ones, or the WorkloadEntries of
// its namespace whose labels include its selector. The result is sorted, so the same input
// always gives the same resources. (A push updates the model incrementally: modelCache.)
func buildModel(services []config.Service, entries []*registrar.WorkloadEntry) []*servicePort {
	byNS := entriesByNamespace(entries)
	var out []*servicePort
	for i := range services {
		out = append(out, servicePorts(&services[i], selectEntries(&services[i], byNS))...)
	}
	sortPorts(out)
	return out
}

// servicePorts is one service's ports, each with the service's static endpoints and those of
// the selected entries, sorted by address and port.
func servicePorts(s *config.Service, selected []*registrar.WorkloadEntry) []*servicePort {
	var out []*servicePort
	for _, h := range s.Hosts {
		for _, p := range s.Ports {
			sp := &servicePort{host: strings.ToLower(h), port: p, internal: s.Location == config.MeshInternal}
			sp.endpoints = make([]endpoint, 0, len(s.Endpoints)+len(selected))
			for _, e := range s.Endpoints {
				sp.endpoints = append(sp.endpoints, staticEndpoint(e, p))
			}
			for _, e := range selected {
				sp.endpoints = append(sp.endpoints, entryEndpoint(e, p))
			}
			slices.SortFunc(sp.endpoints, compareEndpoints)
			out = append(out, sp)
		}
	}
	return out
}

// compareEndpoints orders by every field, so that the order (and so the version) never depends
// on the order the entries came in.
func compareEndpoints(a, b endpoint) int {
	return cmp.Or(cmp.Compare(a.host, b.host), cmp.Compare(a.port, b.port), cmp.Compare(a.weight, b.weight),
		cmp.Compare(a.network, b.network), cmp.Compare(a.locality, b.locality), compareBool(a.mtls, b.mtls))
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func sortPorts(ps []*servicePort) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].host != ps[j].host {
			return ps[i].host < ps[j].host
		}
		return ps[i].port.Number < ps[j].port.Number
	})
}

func entriesByNamespace(entries []*registrar.WorkloadEntry) map[string][]*registrar.WorkloadEntry {
	byNS := map[string][]*registrar.WorkloadEntry{}
	for _, e := range entries {
		byNS[e.Namespace] = append(byNS[e.Namespace], e)
	}
	return byNS
}

// selectEntries returns the healthy WorkloadEntries of the service's namespace that its
// workload selector selects (none for a service without a selector).
func selectEntries(s *config.Service, byNS map[string][]*registrar.WorkloadEntry) []*registrar.WorkloadEntry {
	if s.WorkloadSelector == nil {
		return nil
	}
	var selected []*registrar.WorkloadEntry
	for _, e := range byNS[s.Namespace] {
		if selects(s.WorkloadSelector.Labels, e) && healthy(e) {
			selected = append(selected, e)
		}
	}
	return selected
}

// selects reports whether every selector label is on the entry (spec labels, then metadata).
func selects(sel map[string]string, e *registrar.WorkloadEntry) bool {
	for k, v := range sel {
		got, ok := e.Spec.Labels[k]
		if !ok {
			got, ok = e.Labels[k]
		}
		if !ok || got != v {
			return false
		}
	}
	return true
}

// healthy: an entry with health checks enabled is used only while its Healthy condition is
// True, as istiod does (docs/auto-registration.md); any other entry always.
func healthy(e *registrar.WorkloadEntry) bool {
	if e.Annotations[annotationHealthOn] != "true" {
		return true
	}
	c := e.Status.Condition(registrar.ConditionHealthy)
	return c != nil && c.Status == "True"
}

// mtls is Istio's rule for a WorkloadEntry: the tlsMode label, else a service account.
func mtls(labels map[string]string, serviceAccount string) bool {
	if m, ok := labels[labelTLSMode]; ok {
		return m == "istio"
	}
	return serviceAccount != ""
}

func staticEndpoint(e config.ServiceEndpoint, p config.ServicePort) endpoint {
	port := p.TargetPort
	if n, ok := e.Ports[p.Name]; ok {
		port = n
	}
	return endpoint{host: e.Address, port: port, weight: max(e.Weight, 1), network: e.Network,
		locality: e.Locality, mtls: mtls(e.Labels, e.ServiceAccount)}
}

func entryEndpoint(e *registrar.WorkloadEntry, p config.ServicePort) endpoint {
	port := p.TargetPort
	if n, ok := e.Spec.Ports[p.Name]; ok {
		port = n
	}
	network := e.Spec.Network
	if network == "" {
		network = e.Labels[labelNetwork]
	}
	labels := e.Spec.Labels
	if _, ok := labels[labelTLSMode]; !ok {
		labels = e.Labels
	}
	return endpoint{host: e.Spec.Address, port: port, weight: max(e.Spec.Weight, 1), network: network,
		locality: e.Spec.Locality, mtls: mtls(labels, e.Spec.ServiceAccount)}
}

// modelCache keeps the model between pushes: which entries each service selects, and each
// service's ports. A push after some WorkloadEntries changed re-selects only those entries and
// rebuilds only the ports of the services they enter or leave, instead of matching every entry
// against every selector (with 10,000 entries, most of a push). Only the push loop uses it.
type modelCache struct {
	svcs    []config.Service
	members []map[string]*registrar.WorkloadEntry // per service: selected entries by namespace/name
	ports   [][]*servicePort                      // per service
	valid   bool
}

// rebuild builds the whole model from all entries (the first push, a relist, new services).
func (m *modelCache) rebuild(svcs []config.Service, entries map[string]*registrar.WorkloadEntry) []*servicePort {
	m.svcs, m.valid = svcs, true
	m.members = make([]map[string]*registrar.WorkloadEntry, len(svcs))
	m.ports = make([][]*servicePort, len(svcs))
	for i := range svcs {
		m.members[i] = map[string]*registrar.WorkloadEntry{}
	}
	for k, e := range entries {
		for i := range svcs {
			if member(&svcs[i], e) {
				m.members[i][k] = e
			}
		}
	}
	for i := range svcs {
		m.ports[i] = servicePorts(&svcs[i], m.selected(i))
	}
	return m.model()
}

// update applies changed entries (namespace/name to the entry now, nil: deleted): each is
// taken out of the services that selected it and put in those that select it now. A service
// with a few such moves has its endpoints edited in place (each sorted list keeps its order: a
// removal and an insertion by binary search); one with many is built again from its members.
func (m *modelCache) update(changed map[string]*registrar.WorkloadEntry) []*servicePort {
	moves := map[int][]move{}
	for k, e := range changed {
		for i := range m.svcs {
			old, was := m.members[i][k]
			now := e != nil && member(&m.svcs[i], e)
			switch {
			case now:
				m.members[i][k] = e
			case was:
				delete(m.members[i], k)
			default:
				continue
			}
			mv := move{old: old}
			if now {
				mv.now = e
			}
			moves[i] = append(moves[i], mv)
		}
	}
	for i, mvs := range moves {
		if len(mvs) > maxMoves {
			m.ports[i] = servicePorts(&m.svcs[i], m.selected(i))
			continue
		}
		m.ports[i] = m.moved(i, mvs)
	}
	return m.model()
}

// maxMoves is how many entry changes of one service are edited into its sorted endpoints
// (each costs a copy of the list) before building the list again (a sort) is cheaper.
const maxMoves = 16

// move is one entry leaving (old), joining (now) or changing in a service.
type move struct{ old, now *registrar.WorkloadEntry }

// moved returns service i's ports with the moves applied: new servicePorts (the builder
// compares content, not these) over edited copies of the sorted endpoint lists.
func (m *modelCache) moved(i int, mvs []move) []*servicePort {
	s := &m.svcs[i]
	out := make([]*servicePort, len(m.ports[i]))
	for j, sp := range m.ports[i] {
		p := s.Ports[j%len(s.Ports)] // servicePorts lists each host's ports in order
		eps := slices.Clone(sp.endpoints)
		for _, mv := range mvs {
			if mv.old != nil {
				e := entryEndpoint(mv.old, p)
				if at, ok := slices.BinarySearchFunc(eps, e, compareEndpoints); ok {
					eps = slices.Delete(eps, at, at+1)
				}
			}
			if mv.now != nil {
				e := entryEndpoint(mv.now, p)
				at, _ := slices.BinarySearchFunc(eps, e, compareEndpoints)
				eps = slices.Insert(eps, at, e)
			}
		}
		out[j] = &servicePort{host: sp.host, port: sp.port, internal: sp.internal, endpoints: eps}
	}
	return out
}

// member: the entry is in the service's namespace, selected by its selector, and healthy.
func member(s *config.Service, e *registrar.WorkloadEntry) bool {
	return s.WorkloadSelector != nil && e.Namespace == s.Namespace && selects(s.WorkloadSelector.Labels, e) && healthy(e)
}

func (m *modelCache) selected(i int) []*registrar.WorkloadEntry {
	out := make([]*registrar.WorkloadEntry, 0, len(m.members[i]))
	for _, e := range m.members[i] {
		out = append(out, e)
	}
	return out
}

func (m *modelCache) model() []*servicePort {
	n := 0
	for _, ps := range m.ports {
		n += len(ps)
	}
	out := make([]*servicePort, 0, n)
	for _, ps := range m.ports {
		out = append(out, ps...)
	}
	sortPorts(out)
	return out
}
