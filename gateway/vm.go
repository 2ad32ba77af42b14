package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/meshca"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

// vmSide is the VM control endpoint (port 15012) and what it needs: authn, and a registrar per
// store.
type vmSide struct {
	verifier *authn.Verifier
	regs     []*storeRegistrar // one per store, in the order of components.stores; none without a registrar
	rcfg     registrar.Config
	mreg     prometheus.Registerer // the registrars' metrics
	front    *vmcontrol.Front
	served   <-chan struct{} // closed when the front's Run has returned; nil without a front
}

// storeRegistrar is the registrar of one store and the sync of that store's workload groups.
// Leases, grace periods, cleanup, the group watch and the sweeps are each registrar's own. It is
// the front's registrar of its cluster, and refuses VMs while its store has not been reached
// (latestore.go).
type storeRegistrar struct {
	// st: its cluster (empty: the one store of every cluster) and, until it is open, why not
	// (st.err, under mu).
	st  *store
	reg atomic.Pointer[registrar.Registrar] // nil until the store is open

	mu     sync.Mutex                 // orders group updates: a reload's and the store's late opening
	groups *groupSync                 // nil until the store is open
	want   []*registrar.WorkloadGroup // the config's groups, for a store not open yet
}

// Connect registers the VM with the store's registrar, or refuses it while the store is out of
// reach.
func (sr *storeRegistrar) Connect(ctx context.Context, req registrar.Request) (*registrar.Session, error) {
	if r := sr.reg.Load(); r != nil {
		return r.Connect(ctx, req)
	}
	sr.mu.Lock()
	err := sr.st.err
	sr.mu.Unlock()
	return nil, fmt.Errorf("the registration store of cluster %q has not been reached yet (the gateway retries): %w", sr.st.cluster, err)
}

// startVM builds the verifier, the registrar and the front the config asks for into p.vm (so
// that stop releases what was built even when a later step fails); run starts them.
func (p *components) startVM(cfg *config.File, reg prometheus.Registerer) error {
	vm := &vmSide{}
	p.vm = vm
	if cfg.Control == nil {
		return nil
	}
	acfg, err := withBuiltinTrustBundles(cfg)
	if err != nil {
		return err
	}
	if vm.verifier, err = authn.New(p.ctx, acfg, authn.Options{Logger: p.log.Named("authn"), Registerer: reg}); err != nil {
		return err
	}
	opts := vmcontrol.Options{Verifier: vm.verifier, Logger: p.log.Named("control"), Registerer: reg}
	if cfg.Registrar != nil {
		if err := vm.startRegistrars(p, cfg, reg); err != nil {
			return err
		}
		if len(vm.regs) == 1 && vm.regs[0].st.cluster == "" {
			opts.Registrar = vm.regs[0]
		} else {
			opts.Registrars = map[string]vmcontrol.Registrar{}
			for _, r := range vm.regs {
				opts.Registrars[r.st.cluster] = r
			}
		}
	}
	vm.front, err = vmcontrol.New(*cfg.Control, opts)
	return err
}

// startRegistrars builds a registrar per store (validation made sure there is at least one) and
// writes each store's workload groups; a store not reached at start gets them when it is
// (latestore.go). With a store per cluster, each registrar's metrics carry the constant label
// cluster, so that they share the registry; the one store of every cluster keeps its series
// unlabelled, as before.
func (vm *vmSide) startRegistrars(p *components, cfg *config.File, reg prometheus.Registerer) error {
	vm.rcfg, vm.mreg = *cfg.Registrar, reg
	for _, st := range p.stores {
		sr := &storeRegistrar{st: st, want: cfg.GroupsFor(st.cluster)}
		vm.regs = append(vm.regs, sr)
		if st.st == nil {
			p.health.set(func(h *controlHealth) { h.groupsDown.Add(1) }) // until it is reached
			continue
		}
		if err := vm.open(p, sr); err != nil {
			return err
		}
	}
	return nil
}

// open builds the registrar of an open store and writes the store's workload groups. A store
// that refuses the groups (a full disk, an API server away) degrades the VM side only: the
// data plane serves on and the groups are retried (health.go).
func (vm *vmSide) open(p *components, sr *storeRegistrar) error {
	st := sr.st
	log, mreg := p.log.Named("registrar"), vm.mreg
	if st.cluster != "" {
		log = log.With(zap.String("cluster", st.cluster))
		mreg = prometheus.WrapRegistererWith(prometheus.Labels{"cluster": st.cluster}, mreg)
	}
	r, err := registrar.New(vm.rcfg, registrar.Options{Store: st.st, Logger: log, Registerer: mreg})
	if err != nil {
		return err
	}
	sr.mu.Lock()
	defer sr.mu.Unlock()
	sr.groups = newGroupSync(st.st.WorkloadGroups(), st.where, log, p.health)
	_ = sr.groups.update(p.ctx, sr.want)
	sr.want, st.err = nil, nil
	sr.reg.Store(r)
	return nil
}

// run starts the registrars with their group syncs, and the retries of the stores not reached
// (latestore.go); then the front (after the control plane it may forward to).
func (vm *vmSide) run(p *components) {
	for _, r := range vm.regs {
		if reg := r.reg.Load(); reg != nil {
			p.goRun("registrar", reg.Run)
			p.goRun("workload group sync", r.groups.run)
		} else {
			p.goRun("registration store "+r.st.where, func(ctx context.Context) error { return vm.reach(ctx, p, r) })
		}
	}
	if vm.front != nil {
		vm.served = p.goRun("control endpoint", vm.front.Run)
	}
}

// stopAccepting closes the control endpoint's listener: new VM connections are refused, open
// streams go on.
func (vm *vmSide) stopAccepting() {
	if vm != nil && vm.front != nil {
		vm.front.StopAccepting()
	}
}

// drain waits for the control endpoint to finish its drain (which StopAccepting began), capped
// by its own control.drain_timeout; when ctx ends first, the streams still open are cut.
func (vm *vmSide) drain(ctx context.Context) {
	if vm == nil || vm.served == nil {
		return
	}
	select {
	case <-vm.served:
	case <-ctx.Done():
		vm.front.Cut()
		<-vm.served
	}
}

// syncGroups writes the config's workload groups to the registrars' stores, each store its
// cluster's groups; on failure they are retried in the background until written (or replaced
// by a later reload).
func (vm *vmSide) syncGroups(ctx context.Context, cfg *config.File) error {
	if vm == nil {
		return nil
	}
	var errs []error
	for _, r := range vm.regs {
		if err := r.update(ctx, cfg.GroupsFor(r.st.cluster)); err != nil {
			if r.st.cluster != "" {
				err = fmt.Errorf("cluster %s: %w", r.st.cluster, err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (vm *vmSide) close() {
	if vm != nil && vm.verifier != nil {
		vm.verifier.Close()
	}
}

// pages are the VM side's admin pages, for the components it runs: /debug/registrations (live
// registrations, with a registrar) and /debug/authn (each issuer's key status, never a key).
func (vm *vmSide) pages(log *zap.Logger) pages {
	p := pages{debug: map[string]http.Handler{}}
	if len(vm.regs) > 0 {
		p.debug["GET /debug/registrations"] = jsonPage(log, func() any { return vm.registrations() })
	}
	if vm.verifier != nil {
		p.debug["GET /debug/authn"] = jsonPage(log, func() any { return vm.verifier.Status() })
	}
	return p
}

// registrations are every registrar's registrations, store after store; each names the VM's
// cluster. GET /debug/registrations, the status page and `ewgate vms` show them.
func (vm *vmSide) registrations() []registrar.Registration {
	out := []registrar.Registration{}
	for _, r := range vm.regs {
		if reg := r.reg.Load(); reg != nil {
			out = append(out, reg.Registrations()...)
		}
	}
	return out
}

// withBuiltinTrustBundles returns the authn config with, for a control endpoint forwarding a
// cluster to the built-in control plane, the built-in CA's certificate as a client-certificate
// trust bundle of that cluster, for each trust domain of the cluster's issuers that has no
// bundle configured. A VM then authenticates with the certificate that CA issued it once its
// bootstrap token has expired, without a trust_bundles entry the operator could not write
// before the CA existed (vm-config and serve both refuse a config whose ca_file is missing).
// The CA is opened as the control plane opens it (generated in data_dir on first start).
func withBuiltinTrustBundles(cfg *config.File) (authn.Config, error) {
	acfg := *cfg.Authn
	cluster := ""
	for _, u := range cfg.Control.Upstreams {
		if u.Builtin {
			cluster = u.Cluster
		}
	}
	ca := cfg.ControlPlane
	if cluster == "" || cfg.Control.TLS.ClientCerts == vmcontrol.ClientCertOff || (ca.CA.DataDir == "" && ca.CA.CertFile == "") {
		return acfg, nil
	}
	have := map[string]bool{}
	for _, tb := range acfg.ClientCerts.TrustBundles {
		have[tb.TrustDomain] = true
	}
	var add []string
	for _, is := range acfg.Issuers {
		td := is.TrustDomain
		if td == "" {
			td = authn.DefaultTrustDomain
		}
		if is.Cluster == cluster && !have[td] {
			have[td] = true
			add = append(add, td)
		}
	}
	if len(add) == 0 {
		return acfg, nil
	}
	certFile := ca.CA.CertFile
	if certFile == "" {
		if _, err := meshca.Open(meshca.Options{DataDir: ca.CA.DataDir, TrustDomain: ca.CA.TrustDomain}); err != nil {
			return acfg, err
		}
		certFile = filepath.Join(ca.CA.DataDir, meshca.CertFileName)
	}
	acfg.ClientCerts.TrustBundles = append([]authn.TrustBundleConfig(nil), acfg.ClientCerts.TrustBundles...)
	for _, td := range add {
		acfg.ClientCerts.TrustBundles = append(acfg.ClientCerts.TrustBundles, authn.TrustBundleConfig{TrustDomain: td, CAFile: certFile, Cluster: cluster})
	}
	return acfg, nil
}
