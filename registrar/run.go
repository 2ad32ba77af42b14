package registrar

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Run renews this replica's Lease, watches WorkloadGroups, sweeps entries of dead owners and runs
// the write workers until ctx ends; it returns after all of its goroutines have exited. It may
// be called once.
func (r *Registrar) Run(ctx context.Context) error {
	if r.started.Swap(true) {
		return errors.New("registrar: Run called twice")
	}
	if err := r.renewLease(ctx); err != nil {
		r.log.Warn("registrar: lease not acquired, retrying", zap.Error(err))
	}
	var wg sync.WaitGroup
	for range r.cfg.Workers {
		wg.Go(func() { r.worker(ctx) })
	}
	wg.Go(func() { r.watchGroups(ctx) })
	wg.Go(func() { r.watchEntries(ctx) })
	r.sweep(ctx) // entries this replica owned before a restart are reconciled now
	// Lease renewals and sweeps are queue items too: they run on the workers, and a test that
	// advances a fake clock sees them done once the queue is idle.
	r.queue.AddAfter(leaseKey, r.cfg.LeaseRenew.D())
	r.queue.AddAfter(sweepKey, r.cfg.SweepInterval.D())
	<-ctx.Done()
	r.queue.ShutDown()
	wg.Wait()
	return nil
}

// Queue keys of the periodic jobs.
const (
	leaseKey = "l:"
	sweepKey = "s:"
)

// periodic runs a lease renewal or a sweep and schedules the next one.
func (r *Registrar) periodic(ctx context.Context, key string) {
	if key == leaseKey {
		if err := r.renewLease(ctx); err != nil && ctx.Err() == nil {
			r.m.errors.WithLabelValues("lease").Inc()
			r.log.Warn("registrar: lease renewal failed", zap.Error(err))
		}
		r.queue.AddAfter(leaseKey, r.cfg.LeaseRenew.D())
		return
	}
	r.sweep(ctx)
	r.queue.AddAfter(sweepKey, r.cfg.SweepInterval.D())
}

// renewLease creates or renews this replica's Lease. A replica that missed renewals past the
// lease duration may have lost entries to others; its connected VMs are reconciled again.
func (r *Registrar) renewLease(ctx context.Context) error {
	now := r.clock.Now()
	secs := int32(r.cfg.LeaseDuration.D() / time.Second)
	l, err := r.leases.Get(ctx, r.cfg.LeaseNamespace, r.cfg.Instance)
	if errors.Is(err, ErrNotFound) {
		l = &Lease{ObjectMeta: ObjectMeta{Name: r.cfg.Instance, Namespace: r.cfg.LeaseNamespace}}
		l.Spec = LeaseSpec{HolderIdentity: r.cfg.Instance, LeaseDurationSeconds: secs, AcquireTime: now, RenewTime: now}
		_, err = r.leases.Create(ctx, l)
		return wrapLease(err)
	}
	if err != nil {
		return wrapLease(err)
	}
	lapsed := l.Expired(now)
	if lapsed || l.Spec.HolderIdentity != r.cfg.Instance {
		l.Spec.AcquireTime = now
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = r.cfg.Instance, secs, now
	if _, err := r.leases.Update(ctx, l); err != nil {
		return wrapLease(err)
	}
	if lapsed {
		for _, k := range r.keysWhere(func(w *workload) bool { return w.sessions > 0 }) {
			r.queue.Add(workloadQueueKey(k))
		}
	}
	return nil
}

func wrapLease(err error) error {
	if err != nil {
		return fmt.Errorf("registrar: lease: %w", err)
	}
	return nil
}

// leaseExpired reports whether the replica named owner has let its Lease expire (or never had
// one). A read error counts as alive: taking over on a flaky read would fight a live owner.
func (r *Registrar) leaseExpired(ctx context.Context, owner string) bool {
	if owner == "" {
		return true
	}
	l, err := r.leases.Get(ctx, r.cfg.LeaseNamespace, owner)
	if errors.Is(err, ErrNotFound) {
		return true
	}
	if err != nil {
		return false
	}
	return l.Expired(r.clock.Now())
}

// sweep queues the entries nobody alive looks after: this replica's own that it does not track
// (written before a restart) and those of replicas whose Lease expired. It also re-queues
// every connected VM: a resync in case a watch event was missed, or an owner has gone.
func (r *Registrar) sweep(ctx context.Context) {
	list, _, err := r.entries.List(ctx, "", ListOptions{})
	if err != nil {
		r.m.errors.WithLabelValues(reasonOf(err)).Inc()
		r.log.Warn("registrar: sweep list failed", zap.Error(err))
		return
	}
	expired := map[string]bool{}
	for _, e := range list {
		a := e.Annotations
		if a[AnnotationIdentity] == "" || a[AnnotationAutoRegistrationGroup] == "" {
			continue // not written by an ewgate registrar
		}
		owner := a[AnnotationWorkloadController]
		if owner == r.cfg.Instance {
			if !r.tracks(e.Namespace, e.Name) {
				r.queue.Add(entryQueueKey(e.Namespace, e.Name))
			}
			continue
		}
		dead, seen := expired[owner]
		if !seen {
			dead = r.leaseExpired(ctx, owner)
			expired[owner] = dead
		}
		if dead {
			r.queue.Add(entryQueueKey(e.Namespace, e.Name))
		}
	}
	// A resync of every connected VM, in case a watch event was missed.
	for _, k := range r.keysWhere(func(w *workload) bool { return w.sessions > 0 }) {
		r.queue.Add(workloadQueueKey(k))
	}
}

// tracks reports whether a workload record here has written, or is about to write, ns/name.
func (r *Registrar) tracks(ns, name string) bool {
	keys := r.keysWhere(func(w *workload) bool {
		return w.ns == ns && (w.written == name || w.sessions > 0 && w.entryName == name)
	})
	return len(keys) > 0
}

// syncOrphan looks after an entry no live registrar tracks: handed to the VM's connection here
// if there is one, else marked disconnected (taking ownership) and deleted after the grace period.
func (r *Registrar) syncOrphan(ctx context.Context, ns, name string) error {
	cur, err := r.entries.Get(ctx, ns, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	a := cur.Annotations
	if a[AnnotationIdentity] == "" || a[AnnotationAutoRegistrationGroup] == "" {
		return nil
	}
	owner := a[AnnotationWorkloadController]
	if owner != r.cfg.Instance && !r.leaseExpired(ctx, owner) {
		return nil // its owner is alive and answers for it
	}
	if keys := r.keysWhere(func(w *workload) bool {
		return w.ns == ns && w.sessions > 0 && w.entryName == name
	}); len(keys) > 0 {
		r.queue.Add(workloadQueueKey(keys[0])) // the VM is connected here: reconcile takes it
		return nil
	}
	if r.tracks(ns, name) {
		return nil
	}
	at := parseTime(a, AnnotationDisconnectedAt)
	if at.IsZero() || a[AnnotationConnectedAt] != "" {
		at = r.clock.Now() // was connected to a replica that died: disconnected as of now
	}
	if owner != r.cfg.Instance {
		r.m.takeovers.Inc()
		r.log.Info("registrar: entry of expired owner taken for cleanup",
			zap.String("entry", ns+"/"+name), zap.String("from", owner))
	}
	_, err = r.expire(ctx, cur, at, entryQueueKey(ns, name))
	return err
}

// watchGroups re-queues a group's VMs whenever the group changes, so that a group created or
// re-created while its VMs are connected gets their entries back without a reconnect
// (istio#45329), and a deleted group's entries are withdrawn.
func (r *Registrar) watchGroups(ctx context.Context) {
	watch(ctx, r, r.groups, func(ev Event[*WorkloadGroup]) {
		r.enqueueGroup(ev.Object.Namespace, ev.Object.Name)
	})
}

// watchEntries re-queues a connected VM whose entry another replica changed or anybody deleted:
// when a VM holds streams to two replicas and the newer one ends, the older one takes the entry
// over as soon as it is marked disconnected, before the grace period deletes it.
func (r *Registrar) watchEntries(ctx context.Context) {
	watch(ctx, r, r.entries, func(ev Event[*WorkloadEntry]) {
		e := ev.Object
		if ev.Type != Deleted && e.Annotations[AnnotationWorkloadController] == r.cfg.Instance {
			return // our own write
		}
		for _, k := range r.keysWhere(func(w *workload) bool {
			return w.sessions > 0 && w.ns == e.Namespace && (w.entryName == e.Name || w.written == e.Name)
		}) {
			r.queue.Add(workloadQueueKey(k))
		}
	})
}

// watch lists and watches res until ctx ends, calling on for every event. After each (re)list
// every VM is looked at again: changes between two watches left no event.
func watch[T Object[T]](ctx context.Context, r *Registrar, res Resource[T], on func(Event[T])) {
	for ctx.Err() == nil {
		_, rv, err := res.List(ctx, "", ListOptions{})
		var ch <-chan Event[T]
		if err == nil {
			ch, err = res.Watch(ctx, "", rv)
		}
		if err != nil {
			r.m.errors.WithLabelValues(reasonOf(err)).Inc()
			r.log.Warn("registrar: watch failed", zap.Error(err))
			r.wait(ctx, r.cfg.RetryMax.D())
			continue
		}
		for _, k := range r.keysWhere(func(*workload) bool { return true }) {
			r.queue.Add(workloadQueueKey(k))
		}
		for ev := range ch {
			on(ev)
		}
	}
}

func (r *Registrar) enqueueGroup(ns, name string) {
	for _, k := range r.keysWhere(func(w *workload) bool { return w.ns == ns && w.group == name }) {
		r.queue.Add(workloadQueueKey(k))
	}
}

// wait returns after d on the registrar's clock, or when ctx ends.
func (r *Registrar) wait(ctx context.Context, d time.Duration) {
	c := make(chan struct{})
	t := r.clock.AfterFunc(d, func() { close(c) })
	defer t.Stop()
	select {
	case <-c:
	case <-ctx.Done():
	}
}
