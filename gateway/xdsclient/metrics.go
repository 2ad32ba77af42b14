package xdsclient

import "github.com/prometheus/client_golang/prometheus"

type clientMetrics struct {
	connected  prometheus.Gauge
	ready      prometheus.Gauge
	reconnects prometheus.Counter
	responses  *prometheus.CounterVec // type, result
	lastUpdate prometheus.Gauge
	clusters   prometheus.Gauge
}

func newClientMetrics(reg prometheus.Registerer, since func() (float64, bool)) *clientMetrics {
	m := &clientMetrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_xds_connected", Help: "1 while an ADS stream to the control plane is open.",
		}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_xds_ready", Help: "1 once a first complete set of routes from xDS was applied.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ewgate_xds_reconnects_total", Help: "ADS streams that ended and were retried.",
		}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_xds_pushes_total",
			Help: "xDS responses by type (lds, cds, eds) and result: received; applied (the routes were updated); rejected (NACKed, in part or whole).",
		}, []string{"type", "result"}),
		lastUpdate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_xds_last_update_timestamp_seconds", Help: "When routes from xDS were last applied (unix seconds).",
		}),
		clusters: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_xds_clusters", Help: "Mesh clusters in the last applied xDS routes.",
		}),
	}
	// Before the first update there is no series (not a -1): an alert on staleness then reads
	// ewgate_xds_ready.
	sinceG := &sinceCollector{since: since, desc: prometheus.NewDesc("ewgate_xds_seconds_since_update",
		"Seconds since routes from xDS were last applied; absent before the first.", nil, nil)}
	if reg != nil {
		reg.MustRegister(m.connected, m.ready, m.reconnects, m.responses, m.lastUpdate, m.clusters, sinceG)
	}
	return m
}

// sinceCollector exports seconds since the last update, or nothing when since reports none
// (ok false).
type sinceCollector struct {
	since func() (float64, bool)
	desc  *prometheus.Desc
}

func (c *sinceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *sinceCollector) Collect(ch chan<- prometheus.Metric) {
	if v, ok := c.since(); ok {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, v)
	}
}
