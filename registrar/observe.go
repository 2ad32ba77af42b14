package registrar

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the registrar's ewgate_registrar_* series.
type metrics struct {
	registrations prometheus.Counter
	reconciles    *prometheus.CounterVec
	disconnects   prometheus.Counter
	deletes       prometheus.Counter
	takeovers     prometheus.Counter
	errors        *prometheus.CounterVec
	owned         prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, owned func() float64) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ewgate", Subsystem: "registrar", Name: name, Help: help})
	}
	m := &metrics{
		registrations: counter("registrations_total", "VM streams accepted for registration."),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ewgate", Subsystem: "registrar", Name: "reconciles_total",
			Help: "Entry reconciliations of connected VMs, by result (created, updated, unchanged).",
		}, []string{"result"}),
		disconnects: counter("disconnects_total", "VMs whose last stream ended."),
		deletes:     counter("deletes_total", "WorkloadEntries deleted."),
		takeovers:   counter("takeovers_total", "WorkloadEntries taken from another replica (newer connection or expired lease)."),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ewgate", Subsystem: "registrar", Name: "errors_total",
			Help: "Refused registrations and failed writes, by reason.",
		}, []string{"reason"}),
		owned: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "ewgate", Subsystem: "registrar", Name: "entries_owned",
			Help: "WorkloadEntries this replica currently owns.",
		}, owned),
	}
	if reg == nil {
		return m, nil
	}
	for _, r := range errorReasons { // present at zero from the start
		m.errors.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.registrations, m.reconciles, m.disconnects, m.deletes, m.takeovers, m.errors, m.owned} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// errorReasons are the ewgate_registrar_errors_total reasons reasonOf and the lease loop give.
var errorReasons = []string{"group_not_found", "denied", "address_refused", "reserved_label", "invalid_node", "conflict",
	"foreign_entry", "name_taken", "watch_gone", "store", "lease"}

// reasonOf names an error for the errors_total metric.
func reasonOf(err error) string {
	for _, r := range []struct {
		err    error
		reason string
	}{
		{ErrGroupNotFound, "group_not_found"},
		{ErrDenied, "denied"},
		{ErrAddressRefused, "address_refused"},
		{ErrReservedLabel, "reserved_label"},
		{ErrInvalidNode, "invalid_node"},
		{ErrConflict, "conflict"},
		{ErrAlreadyExists, "conflict"},
		{errForeign, "foreign_entry"},
		{errNameTaken, "name_taken"},
		{ErrGone, "watch_gone"},
	} {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "store"
}

// Registration describes one VM known to this replica, for /debug/registrations.
type Registration struct {
	Key            string     `json:"key"`
	Cluster        string     `json:"cluster,omitempty"` // the VM's verified cluster
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
		Key: w.key, Cluster: w.id.Cluster, Namespace: w.ns, Group: w.group, Entry: w.written, State: w.state,
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
