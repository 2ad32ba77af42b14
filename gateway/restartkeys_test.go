package gateway

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/ewgate/ewgate/gateway/config"
)

func TestRestartKeys(t *testing.T) {
	parse := func(y string) *config.File {
		t.Helper()
		f, err := config.Parse([]byte(y), "test.yaml")
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	base := "admin: {address: 127.0.0.1:15000}\nlisteners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0}\n"
	for _, tc := range []struct {
		next string
		want []string
	}{
		{base, nil},
		{base + "log: {level: debug}\n", nil},
		{base + "drain_timeout: 5s\n", nil},
		{"admin: {address: 127.0.0.1:15001}\nlisteners:\n  - {name: mesh2, kind: mesh, address: 127.0.0.1:0}\n", []string{"admin.address"}},
		{base + "log: {format: console}\nrelay: {engine: goroutines}\nreload: {watch_interval: 5s}\n", []string{"log.format", "reload.watch_interval", "relay.engine"}},
		{base + "xds: {node: {network: n2}}\ndrain_timeout: 5s\n", []string{"xds.node"}},
	} {
		if got := restartKeys(parse(base), parse(tc.next)); !slices.Equal(got, tc.want) {
			t.Errorf("restartKeys(base, %q) = %v, want %v", tc.next, got, tc.want)
		}
	}
	// Every shipped config, parsed twice, has no restart-only difference with itself (nothing
	// in a parsed file differs from one parse to the next, such as a func or a loaded key).
	files, _ := filepath.Glob("../deploy/*/ewgate.yaml")
	more, _ := filepath.Glob("../deploy/kubernetes/overlays/*/ewgate.yaml")
	files = append(files, more...)
	if len(files) < 2 {
		t.Fatalf("found %v; want the shipped configs", files)
	}
	for _, f := range files {
		a, errA := config.LoadOffline(f) // the overlays name files of their pod
		b, errB := config.LoadOffline(f)
		if errA != nil || errB != nil {
			t.Fatalf("%s: %v %v", f, errA, errB)
		}
		if keys := restartKeys(a, b); len(keys) != 0 {
			t.Errorf("%s against itself: %v", f, keys)
		}
	}
}
