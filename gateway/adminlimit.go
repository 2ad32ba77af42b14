package gateway

import (
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewgate/ewgate/gateway/internal/conncap"
)

// adminLimits caps the connections of one admin HTTP server, so that a flood on one of them
// (a slowloris on the status port a load balancer publishes, say) holds a bounded number of
// the process's file descriptors and leaves the data plane's alone.
type adminLimits struct {
	MaxConnections int // open connections of the server; excess ones are closed at accept
	MaxPerSource   int // open connections from one source IP; excess ones are closed at accept
}

// adminLimiter wraps the admin servers' listeners and counts what they refuse in
// ewgate_admin_connections_refused_total{server, reason} and hold in
// ewgate_admin_connections{server}.
type adminLimiter struct {
	refused *prometheus.CounterVec
	open    *prometheus.GaugeVec
}

// Refusal reasons of the admin servers' connection caps.
const (
	adminRefusedMax       = "max_connections"
	adminRefusedPerSource = "per_source"
)

// newAdminLimiter registers the admin connection metrics with reg (nil: not registered).
func newAdminLimiter(reg prometheus.Registerer) *adminLimiter {
	a := &adminLimiter{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_admin_connections_refused_total",
			Help: "Connections an admin HTTP server (admin, status, metrics) closed at accept: reason max_connections or per_source.",
		}, []string{"server", "reason"}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ewgate_admin_connections",
			Help: "Open connections of an admin HTTP server (admin, status, metrics).",
		}, []string{"server"}),
	}
	if reg != nil {
		reg.MustRegister(a.refused, a.open)
	}
	return a
}

// Wrap returns ln with lim applied; server names the server in the metrics.
func (a *adminLimiter) wrap(server string, ln net.Listener, lim adminLimits) net.Listener {
	for _, r := range []string{adminRefusedMax, adminRefusedPerSource} {
		a.refused.WithLabelValues(server, r) // zero rows exist from the start
	}
	return &limitListener{
		Listener:  ln,
		caps:      &conncap.Caps{Max: lim.MaxConnections, PerSource: lim.MaxPerSource},
		refusedMx: a.refused.WithLabelValues(server, adminRefusedMax),
		refusedPS: a.refused.WithLabelValues(server, adminRefusedPerSource),
		open:      a.open.WithLabelValues(server),
	}
}

type limitListener struct {
	net.Listener
	caps                 *conncap.Caps
	refusedMx, refusedPS prometheus.Counter
	open                 prometheus.Gauge
}

// Accept returns the next connection within the caps; those beyond are closed here and never
// reach the HTTP server. Temporary accept errors (EMFILE) are returned for http.Server's own
// back-off.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := conncap.Source(c.RemoteAddr())
		switch l.caps.Admit(src) {
		case conncap.OverTotal:
			l.refusedMx.Inc() // before the close, which the client sees
			conncap.Refuse(c)
			continue
		case conncap.OverPerSource:
			l.refusedPS.Inc()
			conncap.Refuse(c)
			continue
		}
		l.open.Inc()
		return &limitConn{Conn: c, release: func() { l.caps.Release(src); l.open.Dec() }}, nil
	}
}

// limitConn gives its slot back once, on the first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
