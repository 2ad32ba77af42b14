package xdsclient

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Before the first update ewgate_xds_seconds_since_update has no series (it was -1, which a
// "stale for more than N seconds" alert reads as fresh); after one it is the seconds since.
func TestSecondsSinceUpdateHasNoSentinel(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := &Client{}
	newClientMetrics(reg, c.sinceUpdate)
	value := func() (float64, bool) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "ewgate_xds_seconds_since_update" {
				return mf.GetMetric()[0].GetGauge().GetValue(), true
			}
		}
		return 0, false
	}
	if v, ok := value(); ok {
		t.Fatalf("ewgate_xds_seconds_since_update = %v before any update, want no series", v)
	}
	c.mu.Lock()
	c.last = time.Now().Add(-time.Minute)
	c.mu.Unlock()
	if v, ok := value(); !ok || v < 60 {
		t.Fatalf("ewgate_xds_seconds_since_update = %v (present %v) a minute after an update", v, ok)
	}
}
