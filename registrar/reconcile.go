package registrar

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Queue keys: "w:<workload key>" reconciles a VM's entry from the registrar's record of it;
// "e:<namespace>/<name>" looks at an entry nobody here tracks (a dead owner's, or ours from
// before a restart).
func workloadQueueKey(key string) string { return "w:" + key }
func entryQueueKey(ns, name string) string {
	return "e:" + ns + "/" + name
}

// Errors that make a key retry with backoff.
var (
	errForeign   = errors.New("registrar: entry exists and was not auto-registered")
	errNameTaken = errors.New("registrar: entry name held by another connected VM")
)

func (r *Registrar) worker(ctx context.Context) {
	for {
		key, ok := r.queue.Get(ctx)
		if !ok {
			return
		}
		err := r.process(ctx, key)
		if err != nil && ctx.Err() == nil {
			r.m.errors.WithLabelValues(reasonOf(err)).Inc()
			d := r.queue.AddRateLimited(key)
			r.log.Warn("registrar: write failed, retrying", zap.String("key", key),
				zap.Duration("backoff", d), zap.Error(err))
			if strings.HasPrefix(key, "w:") {
				r.update(&workload{key: key[2:]}, func(w *workload) { w.lastErr = err.Error() })
			}
		} else {
			r.queue.Forget(key)
		}
		r.queue.Done(key)
	}
}

func (r *Registrar) process(ctx context.Context, key string) error {
	kind, rest, _ := strings.Cut(key, ":")
	switch kind {
	case "l", "s":
		r.periodic(ctx, key)
		return nil
	case "e":
		ns, name, _ := strings.Cut(rest, "/")
		return r.syncOrphan(ctx, ns, name)
	}
	w := r.snapshot(rest)
	if w == nil {
		return nil
	}
	if w.sessions > 0 {
		return r.syncConnected(ctx, w)
	}
	return r.syncDisconnected(ctx, w)
}

// syncConnected makes the entry of a connected VM what its group and metadata say, unless a
// newer connection elsewhere owns it.
func (r *Registrar) syncConnected(ctx context.Context, w *workload) error {
	g, err := r.groups.Get(ctx, w.ns, w.group)
	if errors.Is(err, ErrNotFound) {
		return r.withdraw(ctx, w, stateNoGroup)
	}
	if err != nil {
		return err
	}
	if err := checkIdentity(w.id, &w.node, g); err != nil {
		return r.withdraw(ctx, w, stateRefused) // the group changed to exclude this VM
	}
	want := r.desiredEntry(g, w)
	cur, err := r.entries.Get(ctx, want.Namespace, want.Name)
	if errors.Is(err, ErrNotFound) {
		cur, err = nil, nil
	}
	if err != nil {
		return err
	}
	var older []*WorkloadEntry
	if !w.oldChecked || (cur == nil && w.written == want.Name) {
		// First write, or the entry vanished: the VM may be registered under another address,
		// by a newer connection elsewhere (then that one stands) or an older one (removed below).
		var newer bool
		if older, newer, err = r.siblings(ctx, w, want.Name); err != nil {
			return err
		}
		if newer {
			r.lost(w)
			return nil
		}
	}
	got, err := r.writeEntry(ctx, w, want, cur)
	if err != nil || got == nil {
		return err
	}
	if err := r.writeHealth(ctx, w, got); err != nil {
		return err
	}
	if err := r.removeOld(ctx, w, got.Name, older); err != nil {
		return err
	}
	r.update(w, func(cur *workload) {
		cur.written, cur.owned, cur.state, cur.lastErr = got.Name, true, stateRegistered, ""
		cur.oldChecked = true
		if !cur.readyClosed {
			close(cur.ready)
			cur.readyClosed = true
		}
	})
	return nil
}

// writeEntry creates or updates the entry; nil, nil when another owner keeps it.
func (r *Registrar) writeEntry(ctx context.Context, w *workload, want, cur *WorkloadEntry) (*WorkloadEntry, error) {
	if cur == nil {
		got, err := r.entries.Create(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("registrar: create %s/%s: %w", want.Namespace, want.Name, err)
		}
		r.m.reconciles.WithLabelValues("created").Inc()
		r.log.Info("registrar: entry created", zap.String("entry", want.Namespace+"/"+want.Name),
			zap.String("identity", w.id.String()), zap.String("address", want.Spec.Address))
		return got, nil
	}
	claim, takeover, err := r.claim(ctx, cur, w)
	if err != nil || !claim {
		if err == nil {
			r.lost(w)
		}
		return nil, err
	}
	if takeover {
		r.m.takeovers.Inc()
		r.log.Info("registrar: entry taken over", zap.String("entry", cur.Namespace+"/"+cur.Name),
			zap.String("from", cur.Annotations[AnnotationWorkloadController]))
	}
	if sameContent(cur, want) {
		r.m.reconciles.WithLabelValues("unchanged").Inc()
		return cur, nil
	}
	want.ResourceVersion, want.UID = cur.ResourceVersion, cur.UID
	got, err := r.entries.Update(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("registrar: update %s/%s: %w", want.Namespace, want.Name, err)
	}
	r.m.reconciles.WithLabelValues("updated").Inc()
	return got, nil
}

// lost records that a newer connection on another replica owns the VM's entry; the session is
// released (Registered closes) since the VM is registered, only not by us. The entry is looked
// at again every half grace period: if that other connection ends while this one lives, this
// replica takes the entry over before the owner's grace period deletes it.
func (r *Registrar) lost(w *workload) {
	r.queue.AddAfter(workloadQueueKey(w.key), r.cfg.GracePeriod.D()/2)
	r.update(w, func(cur *workload) {
		cur.state, cur.owned = stateLost, false
		if !cur.readyClosed {
			close(cur.ready)
			cur.readyClosed = true
		}
	})
}

// claim decides whether w may write over cur: the newest connection wins (istiod's rule), an
// entry of a disconnected VM or of a replica whose Lease expired is taken over, and entries not
// written by a registrar are never touched.
func (r *Registrar) claim(ctx context.Context, cur *WorkloadEntry, w *workload) (ok, takeover bool, err error) {
	a := cur.Annotations
	if a[AnnotationAutoRegistrationGroup] == "" {
		return false, false, fmt.Errorf("%w: %s/%s", errForeign, cur.Namespace, cur.Name)
	}
	owner := a[AnnotationWorkloadController]
	connected := a[AnnotationConnectedAt] != "" && a[AnnotationDisconnectedAt] == ""
	sameVM := a[AnnotationIdentity] == w.id.String() && a[AnnotationNode] == nodeKey(w.node.ID)
	switch {
	case owner == r.cfg.Instance:
		if !sameVM && connected && r.isConnectedHere(cur) {
			return false, false, fmt.Errorf("%w: %s/%s", errNameTaken, cur.Namespace, cur.Name)
		}
		return true, false, nil
	case !connected || r.leaseExpired(ctx, owner):
		return true, true, nil
	case !sameVM:
		// Two VMs claim one address (istio#43950): the one already registered keeps it.
		return false, false, fmt.Errorf("%w: %s/%s", errNameTaken, cur.Namespace, cur.Name)
	case w.connectedAt.After(parseTime(a, AnnotationConnectedAt)):
		return true, true, nil
	}
	return false, false, nil // a stale connect: the entry records a newer one
}

// isConnectedHere reports whether another of this registrar's connected VMs wrote cur.
func (r *Registrar) isConnectedHere(cur *WorkloadEntry) bool {
	keys := r.keysWhere(func(o *workload) bool {
		return o.sessions > 0 && o.written == cur.Name && o.ns == cur.Namespace
	})
	return len(keys) > 0
}

// withdraw removes the entry of a connected VM whose group is gone or no longer admits it; the
// VM stays recorded, and its entry comes back when the group does (istio#45329).
func (r *Registrar) withdraw(ctx context.Context, w *workload, state string) error {
	if w.written != "" && w.owned {
		if err := r.deleteOwned(ctx, w.ns, w.written); err != nil {
			return err
		}
	}
	r.update(w, func(cur *workload) { cur.written, cur.owned, cur.state = "", false, state })
	return nil
}

// deleteOwned deletes an entry if this registrar still owns it, under a resourceVersion
// precondition so that a concurrent takeover is never undone.
func (r *Registrar) deleteOwned(ctx context.Context, ns, name string) error {
	cur, err := r.entries.Get(ctx, ns, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.Annotations[AnnotationWorkloadController] != r.cfg.Instance {
		return nil
	}
	return r.deleteEntry(ctx, cur)
}

func (r *Registrar) deleteEntry(ctx context.Context, cur *WorkloadEntry) error {
	err := r.entries.Delete(ctx, cur.Namespace, cur.Name, Preconditions{ResourceVersion: cur.ResourceVersion})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registrar: delete %s/%s: %w", cur.Namespace, cur.Name, err)
	}
	r.m.deletes.Inc()
	r.log.Info("registrar: entry deleted", zap.String("entry", cur.Namespace+"/"+cur.Name))
	return nil
}

// siblings finds the VM's entries under names other than name (same group, identity and node),
// and reports whether one of them records a newer connection than w's.
func (r *Registrar) siblings(ctx context.Context, w *workload, name string) (older []*WorkloadEntry, newer bool, err error) {
	list, _, err := r.entries.List(ctx, w.ns, ListOptions{LabelSelector: map[string]string{LabelVM: vmLabel(w.key)}})
	if err != nil {
		return nil, false, err
	}
	for _, e := range list {
		a := e.Annotations
		if e.Name == name || a[AnnotationAutoRegistrationGroup] != w.group ||
			a[AnnotationIdentity] != w.id.String() || a[AnnotationNode] != nodeKey(w.node.ID) {
			continue
		}
		last := parseTime(a, AnnotationConnectedAt)
		if d := parseTime(a, AnnotationDisconnectedAt); d.After(last) {
			last = d
		}
		gone := a[AnnotationDisconnectedAt] != ""
		switch {
		case last.Before(w.connectedAt) || gone && last.Equal(w.connectedAt):
			older = append(older, e)
		case !gone && a[AnnotationWorkloadController] != r.cfg.Instance &&
			!r.leaseExpired(ctx, a[AnnotationWorkloadController]):
			newer = true
		}
	}
	return older, newer, nil
}

// removeOld deletes the VM's entries under other names (its IP or network changed), after the
// new one has been written: there is no moment without an entry (istio#44128).
func (r *Registrar) removeOld(ctx context.Context, w *workload, name string, older []*WorkloadEntry) error {
	if w.written != "" && w.written != name && w.owned {
		if err := r.deleteOwned(ctx, w.ns, w.written); err != nil {
			return err
		}
	}
	for _, e := range older {
		if err := r.deleteEntry(ctx, e); err != nil && !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return nil
}

// writeHealth sets the Healthy condition from the VM's last report, if it changed.
func (r *Registrar) writeHealth(ctx context.Context, w *workload, e *WorkloadEntry) error {
	h := w.health
	if h == nil {
		return nil
	}
	status := "False"
	if h.healthy {
		status = "True"
	}
	old := e.Status.Condition(ConditionHealthy)
	if old != nil && old.Status == status && old.Message == h.message {
		return nil
	}
	c := Condition{Type: ConditionHealthy, Status: status, Message: h.message,
		LastProbeTime: h.at.UTC(), LastTransitionTime: h.at.UTC()}
	if old != nil && old.Status == status {
		c.LastTransitionTime = old.LastTransitionTime
	}
	s := e.DeepCopy()
	s.Status.Conditions = []Condition{c}
	for _, oc := range e.Status.Conditions {
		if oc.Type != ConditionHealthy {
			s.Status.Conditions = append(s.Status.Conditions, oc)
		}
	}
	if _, err := r.entries.UpdateStatus(ctx, s); err != nil {
		return fmt.Errorf("registrar: update status %s/%s: %w", e.Namespace, e.Name, err)
	}
	return nil
}

// syncDisconnected marks the entry of a VM without streams disconnected, and deletes it once the
// grace period has passed without a reconnect.
func (r *Registrar) syncDisconnected(ctx context.Context, w *workload) error {
	if w.written == "" || !w.owned {
		r.forget(w)
		return nil
	}
	cur, err := r.entries.Get(ctx, w.ns, w.written)
	if errors.Is(err, ErrNotFound) {
		r.forget(w)
		return nil
	}
	if err != nil {
		return err
	}
	if cur.Annotations[AnnotationWorkloadController] != r.cfg.Instance {
		r.forget(w) // a newer connection elsewhere took it: not ours to disconnect
		return nil
	}
	r.update(w, func(c *workload) { c.state = stateDisconnected })
	done, err := r.expire(ctx, cur, w.disconnectedAt, workloadQueueKey(w.key))
	if done {
		r.forget(w)
	}
	return err
}

// expire handles an owned, disconnected entry: before the grace period ends it writes
// disconnectedAt (dropping connectedAt) and comes back at the deadline; after, it deletes the
// entry within the delete rate limit. done reports the entry is gone.
func (r *Registrar) expire(ctx context.Context, cur *WorkloadEntry, at time.Time, qkey string) (done bool, err error) {
	now := r.clock.Now()
	deadline := at.Add(r.cfg.GracePeriod.D())
	if now.Before(deadline) {
		stamp := at.UTC().Format(time.RFC3339Nano)
		a := cur.Annotations
		if a[AnnotationDisconnectedAt] != stamp || a[AnnotationConnectedAt] != "" ||
			a[AnnotationWorkloadController] != r.cfg.Instance {
			e := cur.DeepCopy()
			e.Annotations = maps.Clone(a)
			delete(e.Annotations, AnnotationConnectedAt)
			e.Annotations[AnnotationDisconnectedAt] = stamp
			e.Annotations[AnnotationWorkloadController] = r.cfg.Instance
			if _, err := r.entries.Update(ctx, e); err != nil {
				return false, fmt.Errorf("registrar: mark %s/%s disconnected: %w", cur.Namespace, cur.Name, err)
			}
		}
		r.queue.AddAfter(qkey, deadline.Sub(now))
		return false, nil
	}
	if wait := r.deletes.take(now); wait > 0 {
		r.queue.AddAfter(qkey, wait)
		return false, nil
	}
	if err := r.deleteEntry(ctx, cur); err != nil {
		return false, err
	}
	return true, nil
}
