package xdsclient

import (
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/dataplane"
)

// wantEDS lists the EDS names of the clusters the mesh listener's chains reference, sorted.
func (c *Client) wantEDS() []string {
	ml := meshListener(c.st.listeners, c.opts.MeshPort)
	if ml == nil {
		return nil
	}
	set := map[string]bool{}
	for _, r := range ml.routes {
		if cl := c.st.clusters[r.cluster]; cl != nil {
			if n := edsName(cl.msg); n != "" {
				set[n] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// specs builds the mesh cluster specs, and reports whether the state is complete: listeners
// and clusters received and the endpoints of every referenced EDS cluster too.
func (c *Client) specs() ([]dataplane.ClusterSpec, bool) {
	if !c.st.got[typeListener] || !c.st.got[typeCluster] {
		return nil, false
	}
	ml := meshListener(c.st.listeners, c.opts.MeshPort)
	if ml == nil {
		return nil, true // no mesh listener: an empty table (istiod has no AUTO_PASSTHROUGH Gateway for us)
	}
	out := make([]dataplane.ClusterSpec, 0, len(ml.routes))
	complete := true
	for _, r := range ml.routes {
		cl := c.st.clusters[r.cluster]
		if cl == nil {
			continue // not (yet) in CDS; Envoy would keep the chain warming
		}
		spec := dataplane.ClusterSpec{Name: r.serverName, LBPolicy: lbPolicy(cl.msg), ConnectTimeout: connectTimeout(cl.msg), ALPN: r.alpn,
			LocalityWeighted: localityWeighted(cl.msg), OutlierDetection: outlierDetection(cl.msg)}
		cla := cl.msg.GetLoadAssignment()
		if n := edsName(cl.msg); n != "" {
			if cla = c.st.endpoints[n]; cla == nil {
				complete = false
				continue
			}
		}
		spec.Endpoints = endpointSpecs(cla)
		spec.OverprovisioningFactor = overprovisioning(cla)
		out = append(out, spec)
	}
	return out, complete
}

// apply hands the routes to the gateway once the state is complete (before, a partial table
// would refuse names the control plane does publish).
func (c *Client) apply(typ string) {
	specs, complete := c.specs()
	if !complete {
		return
	}
	for _, l := range c.opts.Listeners {
		if err := c.opts.Sink.SetMeshClusters(l, specs); err != nil {
			c.log.Error("xds: routes not applied", zap.String("listener", l), zap.Error(err))
			return
		}
	}
	c.m.responses.WithLabelValues(short(typ), "applied").Inc()
	now := time.Now()
	c.mu.Lock()
	c.last = now
	c.mu.Unlock()
	c.m.lastUpdate.Set(float64(now.UnixNano()) / 1e9)
	c.m.clusters.Set(float64(len(specs)))
	if !c.ready.Swap(true) {
		c.m.ready.Set(1)
		c.log.Info("xds: first complete routes applied", zap.Int("clusters", len(specs)))
	}
}
