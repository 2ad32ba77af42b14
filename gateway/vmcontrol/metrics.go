package vmcontrol

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewgate/ewgate/authn"
)

type metrics struct {
	streams        *prometheus.CounterVec // cluster, method, result
	active         prometheus.Gauge
	auth           *prometheus.CounterVec // result
	dialFailures   *prometheus.CounterVec // cluster
	bytes          *prometheus.CounterVec // cluster, direction
	limits         *prometheus.CounterVec // limit
	registers      *prometheus.CounterVec // result
	health         *prometheus.CounterVec // result
	handshakes     *prometheus.CounterVec // reason
	accepts        *prometheus.CounterVec // reason
	conns          prometheus.Gauge
	authenticating prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_streams_total",
			Help: "VM control streams (RPCs) that ended, by cluster, method (ads, delta_ads, ca, other) and result (a gRPC code)."},
			[]string{"cluster", "method", "result"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ewgate_control_streams_active",
			Help: "VM control streams open now."}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_auth_total",
			Help: "Authentications of VM RPCs by result: ok, cert_after_expired_token (an expired token next to a verified client certificate: the certificate authenticated the call), none, rate_limited, busy, cluster_mismatch, identity_mismatch, or an authn reason."},
			[]string{"result"}),
		dialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_upstream_dial_failures_total",
			Help: "Failed connection attempts (TCP or TLS) to a cluster's control plane."},
			[]string{"cluster"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_bytes_total",
			Help: "Message bytes forwarded, by cluster and direction (to_upstream, to_vm)."},
			[]string{"cluster", "direction"}),
		limits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_limits_total",
			Help: "Times a limit was hit: max_connections, max_connections_per_source, max_authenticating_per_source, max_streams, max_streams_per_vm, header_size, message_size, idle_timeout, first_message_timeout, auth_failures, keepalive (a VM disconnected for pinging too often)."},
			[]string{"limit"}),
		registers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_registrations_total",
			Help: "ADS streams with AUTO_REGISTER_GROUP, by result: registered, refused, timeout."},
			[]string{"result"}),
		health: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_health_reports_total",
			Help: "HealthInformation reports applied to WorkloadEntries, by result: healthy, unhealthy, error."},
			[]string{"result"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_handshake_failures_total",
			Help: "VM connections that never got to HTTP/2, by reason: timeout (TLS handshake or HTTP/2 preface not done within limits.handshake_timeout: half-open), closed, not_tls, tls."},
			[]string{"reason"}),
		accepts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ewgate_control_accept_failures_total",
			Help: "Failed accepts on the VM control listener, by reason: fd_limit (EMFILE, ENFILE), memory, other."},
			[]string{"reason"}),
		authenticating: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ewgate_control_authenticating",
			Help: "VM calls whose credentials are being verified now (a key fetch or TokenReview can hold them)."}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ewgate_control_connections_active",
			Help: "VM connections open now (handshakes included), bounded by limits.max_connections."}),
	}
	m.initSeries()
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.streams, m.active, m.auth, m.dialFailures, m.bytes, m.limits, m.registers, m.health, m.handshakes, m.accepts, m.conns, m.authenticating} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("vmcontrol: metrics: %w", err)
		}
	}
	return m, nil
}

// initSeries creates, at zero, the series of every known label value, so that the first
// handshake timeout, limit or refused token shows in rate() and increase() (a series born at
// its first increment has no earlier sample to rise from) and dashboards and alerts find the
// names from the start.
func (m *metrics) initSeries() {
	for _, r := range []string{hsTimeout, hsClosed, hsNotTLS, hsTLS} {
		m.handshakes.WithLabelValues(r)
	}
	for _, r := range []string{"fd_limit", "memory", "other"} {
		m.accepts.WithLabelValues(r)
	}
	for _, l := range []string{"max_connections", "max_connections_per_source", "max_authenticating_per_source", "max_streams",
		"max_streams_per_vm", "header_size", "message_size", "idle_timeout", "first_message_timeout", "auth_failures", "keepalive"} {
		m.limits.WithLabelValues(l)
	}
	auth := []string{resultOK, resultCertAfterExpired, resultNone, resultRateLimited, resultBusy, resultClusterMismatch, resultIdentityMismatch}
	for _, r := range append(auth, authn.Reasons()...) {
		m.auth.WithLabelValues(r)
	}
	for _, r := range []string{"registered", "refused", "timeout"} {
		m.registers.WithLabelValues(r)
	}
}
