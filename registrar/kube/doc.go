// Package kube is the registrar's Store on the Kubernetes API: WorkloadEntries and
// WorkloadGroups as networking.istio.io/v1 custom resources, replica Leases as
// coordination.k8s.io/v1 Leases, over its own small API client (kapi; no client-go, which kept
// about 10 MiB of every gateway resident, Kubernetes store or not).
//
// Reads of entries and groups are served from an informer-style cache (one cluster-wide
// list+watch per kind), never by a GET per VM connection. Writes go to the API server and then
// wait, briefly and boundedly, until the cache has seen them, so that a replica reads its own
// writes; what other replicas wrote may be seen a little late, which the registrar notices as
// ErrConflict and retries (registrar.Resource's contract). Leases are read and written
// directly (a replica reads a few of them per sweep), so they need no list or watch permission.
//
// Usage:
//
//	cfg, err := kube.ClientConfig("") // in-cluster, or a kubeconfig path
//	store, err := kube.New(ctx, kube.Options{Config: cfg, LeaseNamespace: "istio-system"})
//	defer store.Close()
//	r, err := registrar.New(rcfg, registrar.Options{Store: store})
//
// It does not create the Istio CRDs, namespaces or RBAC: see docs/auto-registration.md for
// the permissions a replica needs.
package kube
