package controlplane

import (
	"context"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

type cpMetrics struct {
	builds       *prometheus.CounterVec // result: pushed, unchanged, failed
	buildSeconds prometheus.Histogram
	rebuilt      prometheus.Counter
	endpoints    prometheus.Gauge
	entryEvents  prometheus.Counter
	streams      prometheus.Gauge
	nacks        *prometheus.CounterVec // type
}

func newCPMetrics(reg prometheus.Registerer) *cpMetrics {
	m := &cpMetrics{
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_controlplane_builds_total", Help: "Resource builds of the built-in control plane, by result (pushed, unchanged: nothing to push, failed).",
		}, []string{"result"}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ewgate_controlplane_build_seconds", Help: "Time to build the control plane's resources from services and WorkloadEntries.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		rebuilt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ewgate_controlplane_ports_rebuilt_total", Help: "Service ports whose resources a push built anew (the others' were reused unchanged).",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_controlplane_endpoints", Help: "Endpoints (service port x address) in the served resources.",
		}),
		entryEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ewgate_controlplane_workload_entry_events_total", Help: "WorkloadEntry changes seen by the control plane.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewgate_controlplane_streams", Help: "Open ADS streams.",
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_controlplane_nacks_total", Help: "Responses a client rejected (NACK), by type URL.",
		}, []string{"type"}),
	}
	if reg != nil {
		reg.MustRegister(m.builds, m.buildSeconds, m.rebuilt, m.endpoints, m.entryEvents, m.streams, m.nacks)
	}
	return m
}

func (s *Server) callbacks() server.Callbacks {
	return server.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			s.m.streams.Inc()
			return nil
		},
		StreamClosedFunc: func(int64, *corev3.Node) { s.m.streams.Dec() },
		StreamRequestFunc: func(id int64, r *discovery.DiscoveryRequest) error {
			if d := r.GetErrorDetail(); d != nil {
				s.m.nacks.WithLabelValues(r.GetTypeUrl()).Inc()
				s.log.Warn("control plane: client rejected a response", zap.Int64("stream", id),
					zap.String("node", r.GetNode().GetId()), zap.String("type", r.GetTypeUrl()),
					zap.String("nonce", r.GetResponseNonce()), zap.String("error", d.GetMessage()))
			}
			return nil
		},
	}
}
