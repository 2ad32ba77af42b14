package registrar

import (
	"errors"

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
	for _, c := range []prometheus.Collector{m.registrations, m.reconciles, m.disconnects, m.deletes, m.takeovers, m.errors, m.owned} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

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
