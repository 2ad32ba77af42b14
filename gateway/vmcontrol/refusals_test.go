package vmcontrol_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// TestRefusalLogsAreSampledWithTheirSource: a flood of bad-token calls writes at most
// RefusalLogBurst lines per second; each line names the source address, and the first line of
// the next second says how many were dropped.
func TestRefusalLogsAreSampledWithTheirSource(t *testing.T) {
	const flood = 60
	var mu sync.Mutex
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	core, logs := observer.New(zap.InfoLevel)
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		AuthFailures: vmcontrol.AuthFailureConfig{Rate: -1}}, vmcontrol.Options{Logger: zap.New(core), Now: clock})
	cc := g.dialFrom(t, p, "127.0.0.7")
	bad := withToken(t.Context(), "not.a.jwt")
	for i := range flood {
		if _, _, _, err := echo(t, bad, cc, "x"); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	lines := logs.FilterMessage("control stream").All()
	if len(lines) != vmcontrol.RefusalLogBurst {
		t.Fatalf("%d bad-token calls wrote %d lines, want %d (sampled)", flood, len(lines), vmcontrol.RefusalLogBurst)
	}
	for _, l := range lines {
		src := l.ContextMap()["source"]
		if s, _ := src.(string); !strings.HasPrefix(s, "127.0.0.7:") {
			t.Fatalf("refusal line without the source address: %v", l.ContextMap())
		}
		if _, has := l.ContextMap()["dropped"]; has {
			t.Fatalf("a line of the first window carries dropped: %v", l.ContextMap())
		}
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	echo(t, bad, cc, "x")
	lines = logs.FilterMessage("control stream").All()
	last := lines[len(lines)-1].ContextMap()
	if d, _ := last["dropped"].(uint64); d != flood-vmcontrol.RefusalLogBurst {
		t.Fatalf("next window's line: dropped = %v, want %d (%v)", last["dropped"], flood-vmcontrol.RefusalLogBurst, last)
	}
	if last["refused"] != "auth_malformed" {
		t.Fatalf("refused = %v, want auth_malformed", last["refused"])
	}
}

// TestMessageSizeRefusalsAlwaysCountAsMessageSize: gRPC ends a stream whose message is over
// max_message_bytes from inside RecvMsg, cancelling its context; whichever the front sees
// first, the stream is counted ResourceExhausted and message_size, never Canceled.
func TestMessageSizeRefusalsAlwaysCountAsMessageSize(t *testing.T) {
	const n = 40
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		Limits: vmcontrol.LimitsConfig{MaxMessageBytes: 4096}}, vmcontrol.Options{Registerer: reg})
	cc := g.dial(t, p)
	ctx := withToken(t.Context(), token(t, vmNS, vmSA))
	big := strings.Repeat("x", 8192)
	for i := range n {
		// Half on a stream that has forwarded a message already, half as the first message.
		words := []string{big}
		if i%2 == 1 {
			words = []string{"ok", big}
		}
		if _, _, _, err := echo(t, ctx, cc, words...); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("call %d: %v, want ResourceExhausted", i, err)
		}
	}
	testkit.Eventually(t, "every stream is counted", func() bool { return sumStreams(t, reg) == n })
	if v := testkit.Metric(t, reg, "ewgate_control_streams_total", map[string]string{"result": "ResourceExhausted"}); v != n {
		t.Fatalf("streams ended ResourceExhausted = %v of %d (Canceled: %v)", v, n,
			testkit.Metric(t, reg, "ewgate_control_streams_total", map[string]string{"result": "Canceled"}))
	}
	if v := testkit.Metric(t, reg, "ewgate_control_limits_total", map[string]string{"limit": "message_size"}); v != n {
		t.Fatalf("message_size hits = %v, want %d", v, n)
	}
}

// sumStreams is the total of ewgate_control_streams_total over its labels.
func sumStreams(t testing.TB, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "ewgate_control_streams_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
