package registrar

import (
	"slices"
	"strings"
	"time"
)

// Registration describes one VM known to this replica, for /debug/registrations.
type Registration struct {
	Key            string     `json:"key"`
	Namespace      string     `json:"namespace"`
	Group          string     `json:"group"`
	Entry          string     `json:"entry,omitempty"`
	State          string     `json:"state"`
	Owned          bool       `json:"owned"`
	Identity       string     `json:"identity"`
	NodeID         string     `json:"nodeID"`
	WorkloadName   string     `json:"workloadName,omitempty"`
	Address        string     `json:"address"`
	ClaimedAddress string     `json:"claimedAddress,omitempty"`
	SourceAddress  string     `json:"sourceAddress,omitempty"`
	Streams        int        `json:"streams"`
	ConnectedAt    time.Time  `json:"connectedAt"`
	DisconnectedAt *time.Time `json:"disconnectedAt,omitempty"`
	Healthy        *bool      `json:"healthy,omitempty"`
	LastError      string     `json:"lastError,omitempty"`
}

// Registrations returns a snapshot of the VMs this replica knows, sorted by namespace, group and
// entry name. The values are plain data, ready for encoding/json.
func (r *Registrar) Registrations() []Registration {
	r.mu.Lock()
	out := make([]Registration, 0, len(r.workloads))
	for _, w := range r.workloads {
		out = append(out, w.registration())
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Registration) int {
		return strings.Compare(a.Namespace+"/"+a.Group+"/"+a.Entry+"/"+a.Key, b.Namespace+"/"+b.Group+"/"+b.Entry+"/"+b.Key)
	})
	return out
}

func (w *workload) registration() Registration {
	reg := Registration{
		Key: w.key, Namespace: w.ns, Group: w.group, Entry: w.written, State: w.state,
		Owned: w.owned, Identity: w.id.String(), NodeID: w.node.ID, WorkloadName: w.node.WorkloadName,
		Address: w.addr.String(), Streams: w.sessions, ConnectedAt: w.connectedAt, LastError: w.lastErr,
	}
	if reg.Entry == "" {
		reg.Entry = w.entryName
	}
	if w.claimed.IsValid() && w.claimed != w.addr {
		reg.ClaimedAddress = w.claimed.String()
	}
	if w.source.IsValid() {
		reg.SourceAddress = w.source.String()
	}
	if !w.disconnectedAt.IsZero() {
		t := w.disconnectedAt
		reg.DisconnectedAt = &t
	}
	if w.health != nil {
		h := w.health.healthy
		reg.Healthy = &h
	}
	return reg
}
