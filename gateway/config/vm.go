package config

import (
	"fmt"

	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// The VM onboarding sections keep their own types, defaults and validation in their packages;
// this file only calls them and checks how the sections depend on each other.

func (f *File) setVMDefaults() {
	if f.Authn != nil {
		f.Authn.SetDefaults()
	}
	if f.Control != nil {
		if f.Control.Limits.MaxConnections == 0 {
			soft, _, err := dataplane.OpenFileLimit()
			if err != nil {
				soft = 1 << 20 // unreadable: a limit large enough for every default
			}
			f.Control.Limits.MaxConnections = ControlConnections(soft)
		}
		f.Control.SetDefaults()
	}
	if f.Registrar != nil {
		f.Registrar.SetDefaults()
	}
}

// ControlConnections is the VM control endpoint's connection cap when control.limits
// max_connections is left unset: a quarter of the process's open-file limit, at most
// vmcontrol.DefaultMaxConnections, at least 16. The listeners that leave their
// max_connections unset share what the endpoint and the other holders leave (docs/operations.md, "File limits"), so
// a default config starts under any limit that can serve at all.
func ControlConnections(openFiles uint64) int {
	return int(max(16, min(uint64(vmcontrol.DefaultMaxConnections), openFiles/4)))
}

// BuiltinUpstream reports whether the control endpoint forwards a cluster to the built-in
// control plane.
func (f *File) BuiltinUpstream() bool {
	if f.Control == nil {
		return false
	}
	for _, u := range f.Control.Upstreams {
		if u.Builtin {
			return true
		}
	}
	return false
}

func (f *File) validateVM(v *validator) {
	if f.Authn != nil {
		v.section("authn", f.Authn.Validate())
	}
	if f.Registrar != nil {
		v.section("registrar", f.Registrar.Validate())
	}
	if f.Control != nil {
		v.section("control", f.Control.Validate())
		if f.Authn == nil || len(f.Authn.Issuers) == 0 && len(f.Authn.ClientCerts.TrustBundles) == 0 {
			v.add("control", "the control endpoint authenticates every call: configure authn.issuers or authn.client_certs.trust_bundles")
		}
	}
	if f.Registrar != nil {
		if f.Control == nil {
			v.add("registrar", "VMs register through the control endpoint: configure control as well")
		}
		if f.ControlPlane.WorkloadEntriesDir == "" && f.Kubernetes == nil {
			v.add("registrar", "needs a store: kubernetes (the API server, in a mesh) or control_plane.workload_entries_dir (a directory, standalone)")
		}
	}
	if f.Kubernetes != nil && f.ControlPlane.WorkloadEntriesDir != "" {
		v.add("kubernetes", "the store is the API server or control_plane.workload_entries_dir, not both")
	}
	f.validateStores(v)
	if len(f.WorkloadGroups) > 0 && f.Registrar == nil {
		v.add("workload_groups", "groups are for the registrar: configure registrar as well")
	}
	seen := map[string]bool{}
	for i, g := range f.WorkloadGroups {
		p := fmt.Sprintf("workload_groups[%d]", i)
		switch {
		case g == nil || g.Name == "":
			v.add(p+".metadata.name", "required")
			continue
		case g.Namespace == "":
			v.add(p+".metadata.namespace", "required: a VM joins a group of its own namespace")
		}
		f.validateGroupCluster(v, p, g)
		// With a store per cluster the same group may be in several of them (a VM joins the one
		// of its cluster); one store holds each group once.
		store := ""
		if f.PerClusterStores() {
			store = g.Cluster
		}
		if key := g.Namespace + "/" + g.Name; seen[store+"\x00"+key] {
			v.add(p+".metadata.name", "%s is listed twice%s", key, inCluster(store))
		} else {
			seen[store+"\x00"+key] = true
		}
	}
}

func inCluster(c string) string {
	if c == "" {
		return ""
	}
	return " for cluster " + c
}
