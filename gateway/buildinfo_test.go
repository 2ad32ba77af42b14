package gateway

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/testkit"
)

// ewgate_build_info carries the stamped version and revision and the Go version, value 1; the
// process and Go collectors are registered once (a second registration would fail the scrape).
func TestBuildInfo(t *testing.T) {
	cfg, err := config.Parse([]byte("admin: {address: 127.0.0.1:0}\nlisteners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0}\n"), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(cfg, Options{Version: "v1.2.3-4-gabcdef012345", Revision: "abcdef0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	}()
	if v := testkit.Metric(t, g.reg, "ewgate_build_info", map[string]string{
		"version": "v1.2.3-4-gabcdef012345", "revision": "abcdef0123456789", "goversion": runtime.Version(),
	}); v != 1 {
		t.Fatalf("ewgate_build_info = %v, want 1 with the stamped labels", v)
	}
	mfs, err := g.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, mf := range mfs {
		seen[mf.GetName()]++
	}
	for _, name := range []string{"process_cpu_seconds_total", "go_goroutines", "ewgate_build_info"} {
		if seen[name] != 1 {
			t.Errorf("%s: %d families, want 1", name, seen[name])
		}
	}
}
