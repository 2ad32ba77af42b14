package dataplane

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the data plane's Prometheus series (names ewgate_*).
type metrics struct {
	active         *prometheus.GaugeVec   // listener
	conns          *prometheus.CounterVec // listener, cluster, result
	bytes          *prometheus.CounterVec // listener, cluster, direction
	peek           *prometheus.HistogramVec
	connectFail    *prometheus.CounterVec // cluster
	ejections      *prometheus.CounterVec // cluster
	reloads        *prometheus.CounterVec // result
	snapshotVer    prometheus.Gauge
	snapshotAt     prometheus.Gauge
	openFilesLimit prometheus.Gauge
	relayFallbacks prometheus.Counter
	acceptFails    *prometheus.CounterVec // listener
	maxConns       *prometheus.GaugeVec   // listener, scope
	opened         *prometheus.CounterVec // listener
	handoffs       *prometheus.CounterVec // listener, step
	lastReloadOK   prometheus.Gauge
	lastReloadAt   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ewgate_connections_active", Help: "Connections open now, by listener.",
		}, []string{"listener"}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_connections_total",
			Help: "Connections ended, by listener, cluster (empty when none was chosen) and result (ok, or the reason it was refused or cut).",
		}, []string{"listener", "cluster", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_bytes_total", Help: "Bytes relayed, by listener, cluster and direction (upstream: client to endpoint; downstream: endpoint to client).",
		}, []string{"listener", "cluster", "direction"}),
		peek: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ewgate_client_hello_seconds",
			Help:    "Time from accept to a parsed ClientHello (or to giving up), by listener.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"listener"}),
		connectFail: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_upstream_connect_failures_total", Help: "Failed upstream connection attempts, by cluster.",
		}, []string{"cluster"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_endpoint_ejections_total", Help: "Endpoints ejected by passive health checking, by cluster.",
		}, []string{"cluster"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_config_reloads_total", Help: "Configuration loads, by result (ok or failed).",
		}, []string{"result"}),
		snapshotVer: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_route_snapshot_version", Help: "Version of the route snapshot serving new connections.",
		}),
		snapshotAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_route_snapshot_timestamp_seconds", Help: "When the serving route snapshot was built (unix seconds).",
		}),
		openFilesLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_open_files_limit", Help: "The process's open-file limit; a proxied connection holds 2 files with the epoll relay engine, 6 with goroutines.",
		}),
		relayFallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ewgate_relay_fallbacks_total", Help: "Connections the relay engine refused (out of files, not a TCP upstream) and goroutines relayed.",
		}),
		acceptFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_accept_failures_total",
			Help: "Failed accepts (out of files, a transient kernel error), by listener; each backs the listener off 5 ms to 1 s.",
		}, []string{"listener"}),
		maxConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ewgate_listener_max_connections",
			Help: "The connection caps in force, by listener and scope (listener: max_connections, as set or as shared out of the open-file limit; source: max_connections_per_source).",
		}, []string{"listener", "scope"}),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_connections_opened_total",
			Help: "Connections accepted and admitted (under max_connections and max_connections_per_source), by listener, counted when they open: rate() shows long-lived connections, which ewgate_connections_total counts only when they end.",
		}, []string{"listener"}),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_connection_handoffs_total",
			Help: "Connections the relay engine's loop handed to a goroutine of their own because a step before relaying had to wait, by listener and step (proxy_header, hello: none or part of one yet, refused, dial: a host name, a connect in progress or failed, relay). The others were served on the loop from accept to relaying.",
		}, []string{"listener", "step"}),
		lastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_config_last_reload_successful",
			Help: "1 when the last configuration load (the start, a SIGHUP or a file change) was applied, 0 when it was refused and the previous config kept serving.",
		}),
		lastReloadAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_config_last_reload_success_timestamp_seconds",
			Help: "When a configuration was last applied (unix seconds).",
		}),
	}
	for _, r := range reloadResults {
		m.reloads.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.active, m.conns, m.bytes, m.peek, m.connectFail, m.ejections, m.reloads,
			m.snapshotVer, m.snapshotAt, m.openFilesLimit, m.relayFallbacks, m.acceptFails, m.maxConns,
			m.opened, m.handoffs, m.lastReloadOK, m.lastReloadAt)
	}
	return m
}

// Results of ewgate_config_reloads_total, present from the start. restart_required: a reload
// that was applied but changed keys only a restart applies (the gateway package counts it).
var reloadResults = []string{ReloadOK, ReloadFailed, ReloadRestartRequired}

// ewgate_config_reloads_total results.
const (
	ReloadOK              = "ok"
	ReloadFailed          = "failed"
	ReloadRestartRequired = "restart_required"
)

// refusalResults are the results a connection can end with before a cluster is chosen: each
// listener's series for them exist from its first config on, at 0, so rate() and increase() see
// the first refusal.
var refusalResults = []string{
	resultOverLimit, resultOverSource, resultProxyProtocol,
	"hello_timeout", "hello_too_large", "hello_truncated", "not_tls", "no_sni", "malformed_hello",
	"not_istio_name", "no_istio_alpn", "unknown_sni", "mesh_name_on_ingress", "not_exported",
}

// initListener creates a listener's series at zero (they stay after the listener is removed:
// counters of a name reused later continue).
func (m *metrics) initListener(name string) {
	m.listenerSeries(name)
	m.acceptFails.WithLabelValues(name)
	for _, r := range refusalResults {
		m.conns.WithLabelValues(name, "", r)
	}
}

// listenerSeries are the series of one listener that every connection touches, looked up once
// when the listener is bound rather than by label on each connection (the series are never
// deleted, so the handles stay valid).
type listenerSeries struct {
	active prometheus.Gauge
	opened prometheus.Counter
	peek   prometheus.Observer
}

func (m *metrics) listenerSeries(name string) listenerSeries {
	return listenerSeries{m.active.WithLabelValues(name), m.opened.WithLabelValues(name), m.peek.WithLabelValues(name)}
}

// configApplied records the outcome of a configuration load in the last-reload gauges.
func (m *metrics) configApplied(ok bool, at time.Time) {
	if !ok {
		m.lastReloadOK.Set(0)
		return
	}
	m.lastReloadOK.Set(1)
	m.lastReloadAt.Set(float64(at.UnixNano()) / 1e9)
}

// routedSeries keeps a series of ewgate_bytes_total (each direction) and of
// ewgate_connections_total{result="ok"} for every cluster the serving routes give each listener,
// created at zero when the cluster appears and deleted, with all its results, when it is gone
// from the routes and has no connection left (open: the pairs that still have one; they are
// deleted at a later swap). The series of a cluster are thus there from the start, and bounded
// by the routes however many clusters come and go.
func (m *metrics) routedSeries(prev map[listenerCluster]bool, s *Snapshot, open map[listenerCluster]int64) map[listenerCluster]bool {
	next := map[listenerCluster]bool{}
	for _, name := range s.listenerNames() {
		for _, c := range s.tables[name].clusters() {
			k := listenerCluster{name, c.Name}
			next[k] = true
			if !prev[k] {
				m.bytes.WithLabelValues(name, c.Name, "upstream")
				m.bytes.WithLabelValues(name, c.Name, "downstream")
				m.conns.WithLabelValues(name, c.Name, resultOK)
			}
		}
	}
	for k := range prev {
		if next[k] {
			continue
		}
		if open[k] > 0 {
			next[k] = true // still relaying: forgotten at a later swap
			continue
		}
		labels := prometheus.Labels{"listener": k.listener, "cluster": k.cluster}
		m.bytes.DeletePartialMatch(labels)
		m.conns.DeletePartialMatch(labels)
	}
	return next
}
