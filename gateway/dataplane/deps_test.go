package dataplane

import (
	"os/exec"
	"strings"
	"testing"
)

// The data plane is an SNI relay: it must not link the control side of ewgate. Package config
// imports this package (never the reverse), so a data-plane type that grew a field of another
// component's config would pull that component, and its grpc or Kubernetes dependencies, into
// every data-plane build. docs/architecture.md lists what each package may import.
func TestDependenciesStayOutOfTheDataPlane(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps .: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	forbidden := []string{
		"google.golang.org/grpc",
		"github.com/envoyproxy/go-control-plane",
		"github.com/ewgate/ewgate/authn",
		"github.com/ewgate/ewgate/registrar",
		"github.com/ewgate/ewgate/gateway/config",
		"github.com/ewgate/ewgate/gateway/vmcontrol",
		"github.com/ewgate/ewgate/gateway/controlplane",
		"github.com/ewgate/ewgate/gateway/meshca",
		"github.com/ewgate/ewgate/gateway/xdsclient",
	}
	// Package field (the config error type and the default rule) is the one part of config the
	// data plane may use: it imports the standard library only (its own test checks that).
	const fieldPkg = "github.com/ewgate/ewgate/gateway/config/field"
	var self bool
	for _, d := range deps {
		self = self || d == "github.com/ewgate/ewgate/gateway/dataplane"
		for _, f := range forbidden {
			if d != fieldPkg && (d == f || strings.HasPrefix(d, f+"/")) {
				t.Errorf("the data plane depends on %s; give it its own small type instead (go list -deps ./gateway/dataplane)", d)
			}
		}
	}
	if !self {
		t.Fatalf("go list -deps . did not list the data plane itself; got %d packages:\n%s", len(deps), out)
	}
}
