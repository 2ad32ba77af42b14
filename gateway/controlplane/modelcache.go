package controlplane

import (
	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/registrar"
)

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
// taken out of the services that selected it and put in those that select it now; only the
// services whose members changed get their ports built again.
func (m *modelCache) update(changed map[string]*registrar.WorkloadEntry) []*servicePort {
	touched := make([]bool, len(m.svcs))
	for k, e := range changed {
		for i := range m.svcs {
			_, was := m.members[i][k]
			now := e != nil && member(&m.svcs[i], e)
			switch {
			case now:
				m.members[i][k] = e
			case was:
				delete(m.members[i], k)
			default:
				continue
			}
			touched[i] = true
		}
	}
	for i, t := range touched {
		if t {
			m.ports[i] = servicePorts(&m.svcs[i], m.selected(i))
		}
	}
	return m.model()
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
