package controlplane

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"slices"
	"sort"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// buildSchema is hashed into every version: bump it when the resources built from the same
// model change (a new field set on a cluster, say), so that a client reconnecting to a newer
// binary with the same services is not told it already has them.
const buildSchema = "controlplane/build/v1"

// builder turns the model into the two views incrementally: the resources of a service port
// are rebuilt only when its content hash changed, and each resource type gets a version of its
// own, a digest of its resources' content hashes. A push after one VM changes therefore builds
// and re-sends only that service's endpoints: the clusters, listeners and routes (and the other
// services' endpoints) keep their versions, so the snapshot cache does not send them again.
//
// Versions are content hashes (never counters), so a restarted control plane with the same input
// serves the same versions and a client reconnecting with them is not sent everything again,
// while a different input can never reuse a version. Only the push loop uses a builder.
type builder struct {
	network, locality string
	meshPort          uint32
	ports             map[string]*portBuild // by host:port
	mesh              meshBuild
}

// portBuild is one service port's resources in both views, with the hashes they were built from.
type portBuild struct {
	shape, grpcEps, gwEps [32]byte // what the clusters/listener/route, and each view's endpoints, depend on

	grpcCluster, grpcCLA, listener, route types.Resource
	gwCluster, gwCLA                      types.Resource // nil unless MESH_INTERNAL
	chain                                 *listenerv3.FilterChain
	endpoints                             int
}

// meshBuild is the gateway's listener and the chain names it was built from.
type meshBuild struct {
	names    []string
	listener types.Resource
}

// typed is one resource type of a view: its version and its resources.
type typed struct {
	version string
	items   []types.Resource
}

// built is everything one push serves: the gateway's view and the proxyless gRPC view, and a
// digest of every type's version, so that an unchanged input is never pushed.
type built struct {
	gateway, grpc map[resource.Type]typed
	digest        [32]byte
	endpoints     int
	rebuilt       int // service ports whose resources were built anew
}

func newBuilder(network, locality string, meshPort uint32) *builder {
	return &builder{network: network, locality: locality, meshPort: meshPort, ports: map[string]*portBuild{}}
}

// buildResources is a full build from nothing (what the first push does).
func buildResources(ports []*servicePort, network, locality string, meshPort uint32) *built {
	return newBuilder(network, locality, meshPort).build(ports)
}

// build returns the views of these ports, reusing the resources of every port whose hashes did
// not change, and forgets the ports that are gone.
func (bd *builder) build(ports []*servicePort) *built {
	b := &built{}
	next := make(map[string]*portBuild, len(ports))
	grpcVer := map[resource.Type]*typeHash{}
	gwVer := map[resource.Type]*typeHash{}
	for _, t := range []resource.Type{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType} {
		grpcVer[t] = bd.newTypeHash("grpc", t)
		if t != resource.RouteType { // the gateway asks for no routes
			gwVer[t] = bd.newTypeHash("gateway", t)
		}
	}
	grpc := map[resource.Type][]types.Resource{}
	gw := map[resource.Type][]types.Resource{}
	var chains []*listenerv3.FilterChain
	var chainNames []string
	for _, p := range ports {
		key := p.listenerName()
		pb, rebuilt := bd.port(p, bd.ports[key])
		if rebuilt {
			b.rebuilt++
		}
		next[key] = pb
		b.endpoints += pb.endpoints
		grpc[resource.ClusterType] = append(grpc[resource.ClusterType], pb.grpcCluster)
		grpc[resource.EndpointType] = append(grpc[resource.EndpointType], pb.grpcCLA)
		grpc[resource.ListenerType] = append(grpc[resource.ListenerType], pb.listener)
		grpc[resource.RouteType] = append(grpc[resource.RouteType], pb.route)
		grpcVer[resource.ClusterType].add(key, pb.shape)
		grpcVer[resource.EndpointType].add(key, pb.grpcEps)
		grpcVer[resource.ListenerType].add(key, pb.shape)
		grpcVer[resource.RouteType].add(key, pb.shape)
		if pb.chain == nil {
			continue
		}
		gw[resource.ClusterType] = append(gw[resource.ClusterType], pb.gwCluster)
		gw[resource.EndpointType] = append(gw[resource.EndpointType], pb.gwCLA)
		gwVer[resource.ClusterType].add(key, pb.shape)
		gwVer[resource.EndpointType].add(key, pb.gwEps)
		gwVer[resource.ListenerType].add(key, pb.shape)
		chains = append(chains, pb.chain)
		chainNames = append(chainNames, p.gatewayCluster())
	}
	bd.ports = next
	if bd.mesh.listener == nil || !slices.Equal(bd.mesh.names, chainNames) {
		bd.mesh = meshBuild{names: chainNames, listener: meshListener(bd.meshPort, chains)}
	}
	gw[resource.ListenerType] = []types.Resource{bd.mesh.listener}
	b.grpc = views(grpc, grpcVer)
	b.gateway = views(gw, gwVer)
	h := sha256.New()
	for _, v := range []map[resource.Type]typed{b.gateway, b.grpc} {
		for _, t := range sortedTypes(v) {
			writeStrings(h, t, v[t].version)
		}
	}
	h.Sum(b.digest[:0])
	return b
}

func views(res map[resource.Type][]types.Resource, vers map[resource.Type]*typeHash) map[resource.Type]typed {
	out := make(map[resource.Type]typed, len(vers))
	for t, v := range vers {
		out[t] = typed{version: v.version(), items: res[t]}
	}
	return out
}

// port returns the port's resources: prev's where their hashes are unchanged, new ones where
// not; rebuilt reports whether anything was built.
func (bd *builder) port(p *servicePort, prev *portBuild) (pb *portBuild, rebuilt bool) {
	var gwIdx []int // the endpoints the gateway gets: mTLS ones of its own network (or of none)
	var gwEndpoints []endpoint
	if p.internal {
		for i, e := range p.endpoints {
			if e.mtls && (bd.network == "" || e.network == "" || e.network == bd.network) {
				gwIdx = append(gwIdx, i)
				gwEndpoints = append(gwEndpoints, e)
			}
		}
	}
	shape := hashShape(p)
	grpcEps := hashEndpoints(shape, "grpc", p.endpoints)
	gwEps := hashEndpoints(shape, "gateway", gwEndpoints)
	if prev != nil && prev.shape == shape && prev.grpcEps == grpcEps && prev.gwEps == gwEps {
		return prev, false
	}
	pb = &portBuild{shape: shape, grpcEps: grpcEps, gwEps: gwEps, endpoints: len(p.endpoints)}
	if prev != nil && prev.shape == shape {
		pb.grpcCluster, pb.listener, pb.route = prev.grpcCluster, prev.listener, prev.route
		pb.gwCluster, pb.chain = prev.gwCluster, prev.chain
		pb.grpcCLA, pb.gwCLA = prev.grpcCLA, prev.gwCLA
	} else {
		gname, lname := p.grpcCluster(), p.listenerName()
		pb.grpcCluster, pb.listener, pb.route = edsCluster(gname), apiListener(lname), routeConfig(lname, p.host, gname)
		if p.internal {
			name := p.gatewayCluster()
			pb.gwCluster, pb.chain = edsCluster(name), passthroughChain(name)
		}
	}
	newGRPC := prev == nil || prev.grpcEps != grpcEps
	newGW := p.internal && (prev == nil || prev.gwEps != gwEps || pb.gwCLA == nil)
	var lbs, gwLbs []*endpointv3.LbEndpoint
	if newGRPC && newGW { // one message per endpoint, for both views
		lbs = make([]*endpointv3.LbEndpoint, len(p.endpoints))
		for i, e := range p.endpoints {
			lbs[i] = lbEndpoint(e)
		}
		gwLbs = make([]*endpointv3.LbEndpoint, len(gwIdx))
		for j, i := range gwIdx {
			gwLbs[j] = lbs[i]
		}
	}
	if newGRPC {
		// Proxyless gRPC: every endpoint, at priority 0 (its clients are elsewhere).
		pb.grpcCLA = loadAssignment(p.grpcCluster(), p.endpoints, lbs, "")
	}
	if newGW {
		// The gateway: mTLS endpoints of its own network, by closeness to its locality.
		pb.gwCLA = loadAssignment(p.gatewayCluster(), gwEndpoints, gwLbs, bd.locality)
	}
	return pb, true
}

// typeHash accumulates one type's version: the schema, the build's parameters and every
// resource's key and content hash, in the model's (sorted) order.
type typeHash struct{ h hash.Hash }

func (bd *builder) newTypeHash(view string, t resource.Type) *typeHash {
	th := &typeHash{h: sha256.New()}
	writeStrings(th.h, buildSchema, view, t, bd.network, bd.locality)
	writeUint(th.h, uint64(bd.meshPort))
	return th
}

func (th *typeHash) add(key string, sum [32]byte) {
	writeStrings(th.h, key)
	th.h.Write(sum[:])
}

func (th *typeHash) version() string {
	var sum [32]byte
	return hex.EncodeToString(th.h.Sum(sum[:0])[:8])
}

// hashShape covers what a port's clusters, listener, route and chain are built from.
func hashShape(p *servicePort) [32]byte {
	h := sha256.New()
	writeStrings(h, p.host, p.port.Name, p.port.Protocol)
	writeUint(h, uint64(p.port.Number))
	writeUint(h, uint64(p.port.TargetPort))
	if p.internal {
		writeUint(h, 1)
	} else {
		writeUint(h, 0)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// hashEndpoints covers one view's load assignment: the port's shape and its endpoints in order.
// The fields are appended to one buffer hashed at once (a hash.Hash's Write of each string
// would copy it to the heap: 60,000 allocations for 10,000 endpoints).
func hashEndpoints(shape [32]byte, view string, eps []endpoint) [32]byte {
	buf := make([]byte, 0, 64+len(eps)*48)
	buf = append(buf, shape[:]...)
	buf = appendString(buf, 1, view)
	buf = binary.BigEndian.AppendUint64(buf, uint64(len(eps)))
	for i := range eps {
		e := &eps[i]
		buf = appendString(buf, 1, e.host)
		buf = appendString(buf, 2, e.network)
		buf = appendString(buf, 3, e.locality)
		buf = binary.BigEndian.AppendUint64(buf, uint64(e.port)<<32|uint64(e.weight))
		if e.mtls {
			buf = append(buf, 1)
		} else {
			buf = append(buf, 0)
		}
	}
	return sha256.Sum256(buf)
}

// writeStrings writes each string with its length first, so that no two lists hash alike.
func writeStrings(h hash.Hash, ss ...string) {
	var buf []byte
	for _, s := range ss {
		buf = appendString(buf, 1, s)
	}
	h.Write(buf)
}

func writeUint(h hash.Hash, v uint64) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], v)
	h.Write(n[:])
}

// sortedTypes lists a view's types in a fixed order.
func sortedTypes(v map[resource.Type]typed) []resource.Type {
	out := make([]resource.Type, 0, len(v))
	for t := range v {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

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
