package controlplane

import (
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"sort"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/registrar"
)

// Service registries as Istio names them in the name table: a Kubernetes entry makes the agent
// answer the short names too (name, name.namespace, name.namespace.svc); any other only the host.
const (
	registryKubernetes = "Kubernetes"
	registryExternal   = "External"
)

// nameTableResource is the name of the one NameTable resource in the NDS cache. istiod sends
// the table unnamed; the name is not part of a state-of-the-world response (only the Any is),
// and a delta response needs one.
const nameTableResource = "nametable"

// dnsTable serves the NameTable to everyone who asks (in practice pilot-agents with DNS capture:
// ewgate's own gateway client never asks). It lives in a go-control-plane LinearCache of its own
// type, beside the snapshot cache: a snapshot accepts only the Envoy types it knows, a linear
// cache any type URL.
//
// The table has a name per registered workload, so with 10,000 VMs it is the largest thing a
// push builds; it is built only while someone watches it. A push with no watcher only records
// its input (stale); a watch arriving then builds the table from it before the cache answers
// (ndsCache). mu is held across both, so a push never misses a watch being created.
type dnsTable struct {
	vips  netip.Prefix
	cache *cache.LinearCache
	log   *zap.Logger

	mu      sync.Mutex
	svcs    []config.Service
	entries []*registrar.WorkloadEntry
	stale   bool // svcs and entries not yet built into the cache
	digest  [32]byte
	pushed  bool
	builds  int // tables built (tests)
}

// newDNSTable starts with the table of the initial services, so that an agent connecting before
// the first push gets the table rather than an empty answer.
func newDNSTable(vipRange string, svcs []config.Service, log *zap.Logger) *dnsTable {
	p, err := parseVIPRange(vipRange)
	if err != nil {
		log.Error("control plane: dns vip_range, using the default", zap.String("vip_range", vipRange), zap.Error(err))
		p, _ = parseVIPRange(config.DefaultVIPRange)
	}
	d := &dnsTable{vips: p, log: log, cache: cache.NewLinearCache(NameTableType)}
	d.push(svcs, nil)
	return d
}

func parseVIPRange(s string) (netip.Prefix, error) {
	if s == "" {
		s = config.DefaultVIPRange
	}
	return config.ParseVIPRange(s)
}

// push takes the services and workloads of a push; the table is built now if someone watches
// it, else when someone does.
func (d *dnsTable) push(svcs []config.Service, entries []*registrar.WorkloadEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.svcs, d.entries, d.stale = svcs, entries, true
	if d.watched() {
		d.refreshLocked()
	}
}

// watched reports whether a watch is open on the table. Not the cache's NumCacheWatches: a
// count that go-control-plane v0.14 decrements twice for a watch it answered and whose stream
// then cancelled it (on the client's next request), so it reads 0 while a pilot-agent's watch
// is open; NumWatches counts the watches themselves.
func (d *dnsTable) watched() bool {
	return d.cache.NumWatches(nameTableResource) > 0
}

// refreshLocked builds the table of the last push, if not yet built, and serves it if it changed.
func (d *dnsTable) refreshLocked() {
	if !d.stale {
		return
	}
	d.stale = false
	d.builds++
	table := buildNameTable(d.svcs, d.entries, d.vips)
	b := encodeNameTable(table)
	dg := sha256.Sum256(b)
	if d.pushed && dg == d.digest {
		return
	}
	d.cache.SetResources(map[string]types.Resource{nameTableResource: nameTableFromBytes(b)})
	d.digest, d.pushed = dg, true
	d.log.Info("control plane: name table pushed", zap.Int("hosts", len(table)))
}

// ndsCache is the name table's cache as the ADS server sees it: a watch first brings the
// table up to date with the last push.
type ndsCache struct {
	*cache.LinearCache
	d *dnsTable
}

func (c ndsCache) CreateWatch(r *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	c.d.refreshLocked()
	return c.LinearCache.CreateWatch(r, sub, ch)
}

func (c ndsCache) CreateDeltaWatch(r *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	c.d.refreshLocked()
	return c.LinearCache.CreateDeltaWatch(r, sub, ch)
}

// buildNameTable maps every service host to the service's addresses or, for a service without
// any, to a virtual IP allocated from vips. Hosts of the form <name>.<namespace>.svc.<domain>
// (the service's own name and namespace) are Kubernetes entries, as istiod sends them for
// Kubernetes services: the agent then also answers <name>.<namespace>, <name>.<namespace>.svc,
// and <name> in its own namespace.
//
// Each registered workload behind a service (a WorkloadEntry its selector selects) also gets a
// name of its own under every host of the service, <entry name with '.' as '-'>.<host>, with
// its address: the way a headless Kubernetes service names its pods, so a VM can reach one
// given workload by name.
func buildNameTable(svcs []config.Service, entries []*registrar.WorkloadEntry, vips netip.Prefix) map[string]nameInfo {
	table := map[string]nameInfo{}
	taken := map[netip.Addr]bool{}
	var auto []string
	for i := range svcs {
		s := &svcs[i]
		for _, a := range s.Addresses {
			if ip, err := netip.ParseAddr(a); err == nil {
				taken[ip.Unmap()] = true
			}
		}
	}
	for i := range svcs {
		s := &svcs[i]
		for _, h := range s.Hosts {
			h = strings.ToLower(h)
			ni := nameInfo{Registry: registryExternal}
			if strings.HasPrefix(h, s.Name+"."+s.Namespace+".svc.") {
				ni = nameInfo{Registry: registryKubernetes, Shortname: s.Name, Namespace: s.Namespace}
			}
			ni.IPs = append([]string(nil), s.Addresses...)
			if len(ni.IPs) == 0 {
				auto = append(auto, h)
			}
			table[h] = ni
		}
	}
	byNS := entriesByNamespace(entries)
	for i := range svcs {
		for _, e := range selectEntries(&svcs[i], byNS) {
			ip, err := netip.ParseAddr(e.Spec.Address)
			if err != nil {
				continue // a DNS name or unix:// address: nothing to put in the table
			}
			label := strings.ReplaceAll(e.Name, ".", "-")
			for _, h := range svcs[i].Hosts {
				table[label+"."+strings.ToLower(h)] = nameInfo{Registry: registryExternal, IPs: []string{ip.String()}}
			}
		}
	}
	for h, ip := range allocateVIPs(auto, vips, taken) {
		ni := table[h]
		ni.IPs = []string{ip.String()}
		table[h] = ni
	}
	for h, ni := range table {
		if len(ni.IPs) == 0 { // the range is full: the agent forwards the name instead
			delete(table, h)
		}
	}
	return table
}

// allocateVIPs gives each host an address of the (IPv4) range, derived only from the host names
// and the addresses already taken, so the same configuration always gives the same addresses (a
// restart changes nothing). Each host's home is a hash of its name into the range (the first
// and last address of a range of more than two are never used); hosts are placed in sorted
// order, first every host whose home is free, then the others at the next free address after
// their home. A host at its home keeps it when others come and go, unless a new host with the
// same home sorts before it; a host placed after its home may move back when the one holding its
// home goes. Hosts left over when the range is full get nothing.
func allocateVIPs(hosts []string, vips netip.Prefix, taken map[netip.Addr]bool) map[string]netip.Addr {
	out := map[string]netip.Addr{}
	if !vips.Addr().Is4() || len(hosts) == 0 {
		return out
	}
	hosts = append([]string(nil), hosts...)
	sort.Strings(hosts)
	hosts = compactSorted(hosts)
	base4 := vips.Masked().Addr().As4()
	base := uint64(binary.BigEndian.Uint32(base4[:]))
	size := uint64(1) << (32 - vips.Bits())
	first, usable := uint64(0), size
	if size > 2 {
		first, usable = 1, size-2
	}
	addr := func(off uint64) netip.Addr {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(base+first+off))
		return netip.AddrFrom4(b)
	}
	used := map[uint64]bool{}
	free := usable
	for ip := range taken {
		if !ip.Is4() || !vips.Contains(ip) {
			continue
		}
		b := ip.As4()
		off := uint64(binary.BigEndian.Uint32(b[:])) - base
		if off < first || off-first >= usable || used[off-first] {
			continue
		}
		used[off-first] = true
		free--
	}
	home := func(h string) uint64 {
		sum := sha256.Sum256([]byte(h))
		return binary.BigEndian.Uint64(sum[:8]) % usable
	}
	var rest []string
	for _, h := range hosts {
		if off := home(h); !used[off] {
			used[off] = true
			free--
			out[h] = addr(off)
		} else {
			rest = append(rest, h)
		}
	}
	for _, h := range rest {
		if free == 0 {
			break
		}
		off := home(h)
		for used[off] {
			off = (off + 1) % usable
		}
		used[off] = true
		free--
		out[h] = addr(off)
	}
	return out
}

func compactSorted(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// xdsCache is what the ADS server answers from: the NameTable type from the name table's cache,
// endpoints from the linear cache of the node's group (build.go), every other type from the
// snapshot cache.
func (s *Server) xdsCache() cache.Cache {
	const snapshots, names = "snapshots", "nds"
	classify := func(typeURL string, node *corev3.Node) string {
		switch typeURL {
		case NameTableType:
			return names
		case resource.EndpointType:
			return "eds-" + nodeGroup{}.ID(node)
		}
		return snapshots
	}
	caches := map[string]cache.Cache{snapshots: s.cache, names: ndsCache{s.dns.cache, s.dns}}
	for group, c := range s.eds {
		caches["eds-"+group] = c
	}
	return &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return classify(r.GetTypeUrl(), r.GetNode()) },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return classify(r.GetTypeUrl(), r.GetNode()) },
		Caches:        caches,
	}
}
