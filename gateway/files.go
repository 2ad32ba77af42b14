package gateway

import (
	"fmt"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/dataplane"
)

// fileHolders are the parts of the process, besides the data-plane listeners, that may hold
// open files up to a cap: the VM control endpoint (one file per VM connection, its listening
// socket and its upstream connections) and each admin HTTP server. The gateway adds them to its
// open-file budget at start and at every reload, so that a flood on one of them can never take
// the files another needs (docs/operations.md, "File limits").
func fileHolders(f *config.File) []dataplane.FDHolder {
	var hs []dataplane.FDHolder
	if c := f.Control; c != nil {
		n := c.Limits.MaxConnections + 1
		for _, u := range c.Upstreams {
			n += u.Connections
		}
		hs = append(hs, dataplane.FDHolder{Name: fmt.Sprintf("control endpoint (%d connections)", c.Limits.MaxConnections), FDs: n})
	}
	for _, s := range []struct{ name, addr string }{
		{"admin", f.Admin.Address}, {"status", f.Admin.StatusAddress}, {"metrics", f.Admin.MetricsAddress},
	} {
		if s.addr != "" {
			hs = append(hs, dataplane.FDHolder{Name: s.name + " server", FDs: f.Admin.MaxConnections + 1})
		}
	}
	return hs
}
