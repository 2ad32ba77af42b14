// Package registrar registers authenticated VMs as Istio WorkloadEntries, the way istiod's
// auto-registration does (docs/auto-registration.md), without its known faults: entries are
// keyed by VM identity rather than IP, fully reconciled on every reconnect, addressed by a
// configurable policy (claimed, observed for NAT, or claimed within CIDRs), cleaned after a
// gateway replica dies (each replica holds a Lease), and restored when their WorkloadGroup is
// re-created.
//
// It does not authenticate (package authn does, and the caller converts its identity to
// Identity), speak xDS (the control endpoint converts the node to Node and maps the errors of
// Connect onto gRPC codes), or talk to Kubernetes (the Store interface does; this package has
// the memory and file stores, registrar/kube the Kubernetes one).
//
// Usage:
//
//	store, err := registrar.OpenFileStore(dir)
//	...
//	err = registrar.SyncGroups(ctx, store.WorkloadGroups(), groupsFromConfig)
//	r, err := registrar.New(cfg.Registrar, registrar.Options{Store: store, Logger: log, Registerer: reg})
//	go r.Run(ctx) // returns after its goroutines have exited
//
//	// per VM stream, once the first DiscoveryRequest carries AUTO_REGISTER_GROUP:
//	sess, err := r.Connect(ctx, registrar.Request{Identity: id, Node: node, Source: remoteAddr})
//	if err != nil { ... } // ErrGroupNotFound -> FailedPrecondition, ErrDenied -> PermissionDenied, ...
//	defer sess.Close()
//	<-sess.Registered() // optional: hold the stream until the entry exists
//	sess.SetHealth(true, "") // on HealthInformation
//
// Every write goes through a work queue (per-key exponential backoff, a delete rate limit) and
// optimistic concurrency; all time comes from an injected Clock.
package registrar
