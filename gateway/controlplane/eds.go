package controlplane

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// Endpoints are served from a go-control-plane LinearCache per node group rather than from the
// snapshot: a linear cache versions each resource, so a push sends a client only the load
// assignments that changed among those it subscribed to (state-of-the-world EDS need not repeat
// the others, and the gateway's client keeps them), and it marshals each resource once for
// every stream instead of once per response. A snapshot would re-send, and re-marshal, every
// subscribed load assignment whenever any of them changed.

// updateEndpoints hands the cache the load assignments that are new or were built anew since
// was (the builder reuses an unchanged one, so identity is the test) and deletes the ones gone.
func updateEndpoints(c *cache.LinearCache, was, now []types.Resource) error {
	old := make(map[string]types.Resource, len(was))
	for _, r := range was {
		old[cache.GetResourceName(r)] = r
	}
	update := map[string]types.Resource{}
	for _, r := range now {
		name := cache.GetResourceName(r)
		if old[name] != r {
			update[name] = r
		}
		delete(old, name)
	}
	var gone []string
	for name := range old {
		gone = append(gone, name)
	}
	if len(update) == 0 && len(gone) == 0 {
		return nil
	}
	return c.UpdateResources(update, gone)
}

// view is one node group's resources.
func (b *built) view(group string) map[resource.Type]typed {
	if group == groupGateway {
		return b.gateway
	}
	return b.grpc
}

// snapshot is the view without its endpoints (served from the linear cache), each type with
// its own version, so that a client is sent only the types that changed.
func snapshot(view map[resource.Type]typed) *cache.Snapshot {
	snap := &cache.Snapshot{}
	for t, v := range view {
		if t == resource.EndpointType {
			continue
		}
		snap.Resources[cache.GetResponseType(t)] = cache.NewResources(v.version, v.items)
	}
	return snap
}
