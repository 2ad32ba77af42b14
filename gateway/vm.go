package main

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

// vmParts are the VM control endpoint (port 15012) and what it needs: authn, and the registrar
// with its store.
type vmParts struct {
	verifier *authn.Verifier
	reg      *registrar.Registrar
	store    registrar.Store
	front    *vmcontrol.Front
	groups   *groupSync // nil without a registrar
}

// startVM builds the verifier, the registrar and the front the config asks for into p.vm (so
// that stop releases what was built even when a later step fails); run starts them.
func (p *parts) startVM(cfg *config.File, reg prometheus.Registerer) error {
	vm := &vmParts{}
	p.vm = vm
	if cfg.Control == nil {
		return nil
	}
	var err error
	if vm.verifier, err = authn.New(p.ctx, *cfg.Authn, authn.Options{Logger: p.log.Named("authn"), Registerer: reg}); err != nil {
		return err
	}
	opts := vmcontrol.Options{Verifier: vm.verifier, Logger: p.log.Named("control"), Registerer: reg}
	if cfg.Registrar != nil {
		vm.store = p.store // validation made sure there is one
		vm.reg, err = registrar.New(*cfg.Registrar, registrar.Options{Store: vm.store, Logger: p.log.Named("registrar"), Registerer: reg})
		if err != nil {
			return err
		}
		// A store that refuses the groups (a full disk, an API server away) degrades the VM
		// side only: the data plane serves on and the groups are retried (groupsync.go).
		vm.groups = newGroupSync(vm.store.WorkloadGroups(), p.where, p.log.Named("registrar"), p.health)
		_ = vm.groups.update(p.ctx, cfg.WorkloadGroups)
		opts.Registrar = vm.reg
	}
	vm.front, err = vmcontrol.New(*cfg.Control, opts)
	return err
}

// run starts the registrar and the front (after the control plane they may forward to).
func (vm *vmParts) run(p *parts) {
	if vm.reg != nil {
		p.goRun("registrar", vm.reg.Run)
		p.goRun("workload group sync", vm.groups.run)
	}
	if vm.front != nil {
		p.goRun("control endpoint", vm.front.Run)
	}
}

// syncGroups writes the config's workload groups to the registrar's store; on failure they
// are retried in the background until written (or replaced by a later reload).
func (vm *vmParts) syncGroups(ctx context.Context, cfg *config.File) error {
	if vm == nil || vm.groups == nil {
		return nil
	}
	return vm.groups.update(ctx, cfg.WorkloadGroups)
}

func (vm *vmParts) close() {
	if vm != nil && vm.verifier != nil {
		vm.verifier.Close()
	}
}

// debugHandlers are the admin pages of the VM parts: /debug/registrations (live registrations)
// and /debug/authn (each issuer's key status, never a key).
func (s *server) debugHandlers() map[string]http.Handler {
	page := func(get func(vm *vmParts) (any, bool)) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			var vm *vmParts
			if p := s.parts.Load(); p != nil {
				vm = p.vm
			}
			v, ok := any(nil), false
			if vm != nil {
				v, ok = get(vm)
			}
			if !ok {
				http.Error(w, "not configured", http.StatusNotFound)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			if err := enc.Encode(v); err != nil {
				s.log.Debug("debug page", zap.Error(err))
			}
		})
	}
	return map[string]http.Handler{
		"GET /debug/registrations": page(func(vm *vmParts) (any, bool) {
			if vm.reg == nil {
				return nil, false
			}
			return vm.reg.Registrations(), true
		}),
		"GET /debug/authn": page(func(vm *vmParts) (any, bool) {
			if vm.verifier == nil {
				return nil, false
			}
			return vm.verifier.Status(), true
		}),
	}
}
