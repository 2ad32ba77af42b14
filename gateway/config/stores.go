package config

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ewgate/ewgate/registrar"
)

// The registration stores: one (kubernetes.kubeconfig, or control_plane.workload_entries_dir)
// used for every cluster, or one API server per cluster (kubernetes.clusters), so that a VM's
// WorkloadEntry lands in the cluster whose istiod serves it.

// PerClusterStores reports whether each cluster has its own registration store
// (kubernetes.clusters).
func (f *File) PerClusterStores() bool {
	return f.Kubernetes != nil && len(f.Kubernetes.Clusters) > 0
}

// GroupsFor returns the workload groups that go to the store of cluster; "" is the one store of
// every cluster, which takes every group.
func (f *File) GroupsFor(cluster string) []*registrar.WorkloadGroup {
	out := make([]*registrar.WorkloadGroup, 0, len(f.WorkloadGroups))
	for _, g := range f.WorkloadGroups {
		if g != nil && (cluster == "" || g.Cluster == cluster) {
			out = append(out, &g.WorkloadGroup)
		}
	}
	return out
}

// upstreamClusters returns the clusters of control.upstreams, in order.
func (f *File) upstreamClusters() []string {
	if f.Control == nil {
		return nil
	}
	var out []string
	for _, u := range f.Control.Upstreams {
		out = append(out, u.Cluster)
	}
	return out
}

// validateStores checks kubernetes.clusters against control.upstreams: each store is a cluster's
// that VMs can come from, and (with a registrar) every cluster VMs can come from has a store.
func (f *File) validateStores(v *validator) {
	if !f.PerClusterStores() {
		return
	}
	k := f.Kubernetes
	if k.Kubeconfig != "" {
		v.add("kubernetes.kubeconfig", "one store for every cluster (kubeconfig) or a store per cluster (clusters), not both: "+
			"move this kubeconfig into a kubernetes.clusters[] entry")
	}
	if f.Control == nil {
		v.add("kubernetes.clusters", "a store per cluster follows the clusters of control.upstreams: configure control as well")
	}
	ups := f.upstreamClusters()
	byCluster := map[string]int{}
	byFile := map[string]int{}
	for i, c := range k.Clusters {
		p := fmt.Sprintf("kubernetes.clusters[%d]", i)
		switch j, dup := byCluster[c.Cluster]; {
		case c.Cluster == "":
			v.add(p+".cluster", "required: the cluster (control.upstreams[].cluster) whose VMs are registered in this API server")
		case dup:
			v.add(p+".cluster", "%q duplicates kubernetes.clusters[%d].cluster: one store per cluster", c.Cluster, j)
		case f.Control != nil && !slices.Contains(ups, c.Cluster):
			v.add(p+".cluster", "%q is not the cluster of any control.upstreams entry, so no VM could be registered here: want one of %s",
				c.Cluster, strings.Join(ups, ", "))
		default:
			byCluster[c.Cluster] = i
		}
		if j, dup := byFile[c.Kubeconfig]; dup {
			what := "the in-cluster service account (an empty kubeconfig)"
			if c.Kubeconfig != "" {
				what = c.Kubeconfig
			}
			v.add(p+".kubeconfig", "kubernetes.clusters[%d] uses %s too: each cluster's store is its own API server", j, what)
		} else {
			byFile[c.Kubeconfig] = i
		}
	}
	if f.Registrar == nil || f.Control == nil {
		return
	}
	for i, u := range f.Control.Upstreams {
		if _, ok := byCluster[u.Cluster]; !ok && u.Cluster != "" {
			v.add(fmt.Sprintf("control.upstreams[%d]", i), "%s has no registration store: add kubernetes.clusters[] for it", u.Cluster)
		}
	}
}

// validateGroupCluster checks workload_groups[i].cluster: with a store per cluster it names one
// of them; with one store it is optional and, if set, a cluster of control.upstreams.
func (f *File) validateGroupCluster(v *validator, p string, g *WorkloadGroup) {
	if f.PerClusterStores() {
		var stores []string
		for _, c := range f.Kubernetes.Clusters {
			stores = append(stores, c.Cluster)
		}
		switch {
		case g.Cluster == "":
			v.add(p+".cluster", "required with a store per cluster: the cluster whose API server holds this group (one of %s)", strings.Join(stores, ", "))
		case !slices.Contains(stores, g.Cluster):
			v.add(p+".cluster", "%q has no registration store: want one of kubernetes.clusters[].cluster (%s)", g.Cluster, strings.Join(stores, ", "))
		}
		return
	}
	if ups := f.upstreamClusters(); g.Cluster != "" && f.Control != nil && !slices.Contains(ups, g.Cluster) {
		v.add(p+".cluster", "%q is not the cluster of any control.upstreams entry: want one of %s, or leave it out (one store holds every group)",
			g.Cluster, strings.Join(ups, ", "))
	}
}
