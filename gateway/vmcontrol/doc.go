// Package vmcontrol is the VM control endpoint (port 15012): a TLS gRPC server that authenticates
// every RPC before anything reaches a control plane, registers auto-registering VMs, and
// forwards their xDS and certificate traffic to the control plane of their own cluster.
//
// Where Istio's east-west gateway passes 15012 through to istiod as opaque TLS, the front
// terminates TLS, checks the bearer token (package authn) or the client certificate, compares
// the cluster that vouched for the identity with the ClusterID the VM names, and refuses
// (Unauthenticated, PermissionDenied, ResourceExhausted after repeated failures from one
// address) without opening anything upstream. Accepted RPCs are forwarded as raw frames
// (never decoded, no copy) over a few HTTP/2 connections per upstream shared by all VMs, with
// static flow-control windows so a slow side holds back the other instead of being buffered.
// Before anything is read, the listener enforces limits.max_connections and
// limits.max_connections_per_source at accept (conns.go); request metadata is bounded by
// limits.max_header_bytes and the calls of one address being authenticated by
// limits.max_authenticating_per_source. Open streams are counted per VM (identity, source
// address, ADS node), not per identity: a WorkloadGroup's VMs share one. Refusals are logged
// with their source address, sampled per reason (package logsample).
// Only the first request of an ADS stream is decoded: its node drives the registrar (the
// stream waits for the WorkloadEntry), and it is re-encoded without AUTO_REGISTER_GROUP so
// istiod does not register the VM a second time. With a registrar per cluster
// (Options.Registrars), the VM's verified cluster picks its registrar as it picks its upstream,
// so its WorkloadEntry lands where that cluster's istiod reads it. Health reports on the stream update the
// entry; the end of the stream closes the registrar session. Limits are counted when hit,
// including gRPC's own keepalive enforcement, seen as the GOAWAY too_many_pings it writes
// (keepalive.go).
//
// It does not verify credentials itself (authn does), write entries (registrar does), or
// serve xDS (the upstream does: istiod, or the built-in control plane reached in-process
// through BuiltinListener, whose calls carry the verified identity via BuiltinServerOptions
// and authn.NewContext).
//
// Usage:
//
//	f, err := vmcontrol.New(cfg.Control, vmcontrol.Options{Verifier: v, Registrar: r, Logger: log, Registerer: reg})
//	cp := controlplane.New(controlplane.Options{..., CA: ca, ServerOptions: f.BuiltinServerOptions()})
//	go cp.Run(ctx, f.BuiltinListener())
//	err = f.Run(ctx) // listens on cfg.Control.Address; returns after draining
package vmcontrol
