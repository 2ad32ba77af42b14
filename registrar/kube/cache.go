package kube

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

type nsName struct{ namespace, name string }

// cached is one object as the cache holds it: converted once, when the watch delivers it, plus
// the object as the API server sent it, the base of later updates.
type cached[T any] struct {
	obj T
	raw kapi.Object
}

// objectCache is what the store's reflector (reflector.go) fills: a cluster-wide list+watch
// of one kind. It keeps the resource version of the last
// change it applied under the same lock as the objects, so that List returns a listing and the
// version it is exact at: a Watch from that version has neither a gap nor a replay.
type objectCache[T registrar.Object[T]] struct {
	kind   string
	decode func(kapi.Object) (T, error)
	onErr  func(error)

	mu      sync.RWMutex
	objs    map[nsName]cached[T]
	rv      string
	rvNum   uint64 // rv as a number, 0 if it is not one
	synced  bool
	changed chan struct{} // closed and replaced at every change
}

func newObjectCache[T registrar.Object[T]](kind string, decode func(kapi.Object) (T, error), onErr func(error)) *objectCache[T] {
	return &objectCache[T]{kind: kind, decode: decode, onErr: onErr, objs: map[nsName]cached[T]{}, changed: make(chan struct{})}
}

// put applies one watch event: the object added or changed, or deleted.
func (c *objectCache[T]) put(u kapi.Object, del bool) {
	k := nsName{u.Namespace(), u.Name()}
	var o T
	if !del {
		var err error
		if o, err = c.decode(u); err != nil {
			c.onErr(err) // an object the registrar cannot read is left out, not fatal
			del = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if del {
		delete(c.objs, k)
	} else {
		c.objs[k] = cached[T]{obj: o, raw: u}
	}
	c.setRVLocked(u.ResourceVersion())
}

// bookmark records a version the watch reached without a change.
func (c *objectCache[T]) bookmark(rv string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setRVLocked(rv)
}

// setRVLocked records the version the cache is now exact at and wakes the waiters.
func (c *objectCache[T]) setRVLocked(rv string) {
	c.rv = rv
	c.rvNum, _ = strconv.ParseUint(rv, 10, 64)
	close(c.changed)
	c.changed = make(chan struct{})
}

// Replace installs a whole listing (the Reflector's list, and every relist).
func (c *objectCache[T]) replace(items []kapi.Object, rv string) {
	objs := make(map[nsName]cached[T], len(items))
	for _, u := range items {
		o, err := c.decode(u)
		if err != nil {
			c.onErr(err)
			continue
		}
		objs[nsName{u.Namespace(), u.Name()}] = cached[T]{obj: o, raw: u}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.objs, c.synced = objs, true
	c.setRVLocked(rv)
}

// get returns a copy of the object and its raw form.
func (c *objectCache[T]) get(ns, name string) (T, kapi.Object, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	o, ok := c.objs[nsName{ns, name}]
	if !ok {
		var zero T
		return zero, nil, false
	}
	return o.obj.DeepCopy(), o.raw, true
}

// list returns copies of the matching objects, sorted by namespace and name, and the resource
// version the listing is exact at.
func (c *objectCache[T]) list(ns string, match func(*registrar.ObjectMeta) bool) ([]T, string) {
	c.mu.RLock()
	var out []T
	for k, o := range c.objs {
		if (ns == "" || k.namespace == ns) && match(o.obj.Meta()) {
			out = append(out, o.obj.DeepCopy())
		}
	}
	rv := c.rv
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b T) int {
		ma, mb := a.Meta(), b.Meta()
		if ma.Namespace != mb.Namespace {
			return compare(ma.Namespace, mb.Namespace)
		}
		return compare(ma.Name, mb.Name)
	})
	return out, rv
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (c *objectCache[T]) hasSynced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced
}

// waitSynced waits until the first listing is in, ctx ends or d passes.
func (c *objectCache[T]) waitSynced(ctx context.Context, d time.Duration) bool {
	return c.waitFor(ctx, d, func() bool { return c.synced })
}

// waitFor waits until cond holds for the cache (checked under its lock), ctx ends or d passes.
// It reports whether cond held.
func (c *objectCache[T]) waitFor(ctx context.Context, d time.Duration, cond func() bool) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		c.mu.RLock()
		ok, ch := cond(), c.changed
		c.mu.RUnlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// waitRV waits until the cache has applied resource version rv (a write's). Resource versions
// are opaque in Kubernetes' API, but every etcd-backed API server issues them as increasing
// integers (etcd's revision); with any other form the wait is skipped and the cache is only
// eventually consistent.
func (c *objectCache[T]) waitRV(ctx context.Context, d time.Duration, rv string) bool {
	want, err := strconv.ParseUint(rv, 10, 64)
	if err != nil {
		return false
	}
	return c.waitFor(ctx, d, func() bool { return c.rvNum >= want })
}

// waitGone waits until the cache no longer holds ns/name with the given UID.
func (c *objectCache[T]) waitGone(ctx context.Context, d time.Duration, ns, name, uid string) bool {
	return c.waitFor(ctx, d, func() bool {
		o, ok := c.objs[nsName{ns, name}]
		return !ok || uid != "" && o.obj.Meta().UID != uid
	})
}
