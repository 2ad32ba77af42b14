package kube

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"

	"github.com/ewgate/ewgate/registrar"
)

type nsName struct{ namespace, name string }

// cached is one object as the cache holds it: converted once, when the watch delivers it, plus
// the object as the API server sent it, the base of later updates.
type cached[T any] struct {
	obj T
	raw *unstructured.Unstructured
}

// objectCache is the store a client-go Reflector fills (cache.Store): a cluster-wide list+watch
// of one kind. Unlike client-go's thread-safe store it keeps the resource version of the last
// change it applied under the same lock as the objects, so that List returns a listing and the
// version it is exact at: a Watch from that version has neither a gap nor a replay.
type objectCache[T registrar.Object[T]] struct {
	kind   string
	decode func(*unstructured.Unstructured) (T, error)
	onErr  func(error)

	mu      sync.RWMutex
	objs    map[nsName]cached[T]
	rv      string
	rvNum   uint64 // rv as a number, 0 if it is not one
	synced  bool
	changed chan struct{} // closed and replaced at every change
}

func newObjectCache[T registrar.Object[T]](kind string, decode func(*unstructured.Unstructured) (T, error), onErr func(error)) *objectCache[T] {
	return &objectCache[T]{kind: kind, decode: decode, onErr: onErr, objs: map[nsName]cached[T]{}, changed: make(chan struct{})}
}

var _ cache.Store = (*objectCache[*registrar.WorkloadEntry])(nil)

func (c *objectCache[T]) put(obj any, del bool) error {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("registrar/kube: %s cache: unexpected %T", c.kind, obj)
	}
	k := nsName{u.GetNamespace(), u.GetName()}
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
	c.setRVLocked(u.GetResourceVersion())
	return nil
}

// setRVLocked records the version the cache is now exact at and wakes the waiters.
func (c *objectCache[T]) setRVLocked(rv string) {
	c.rv = rv
	c.rvNum, _ = strconv.ParseUint(rv, 10, 64)
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *objectCache[T]) Add(obj any) error    { return c.put(obj, false) }
func (c *objectCache[T]) Update(obj any) error { return c.put(obj, false) }
func (c *objectCache[T]) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	return c.put(obj, true)
}

// Replace installs a whole listing (the Reflector's list, and every relist).
func (c *objectCache[T]) Replace(items []any, rv string) error {
	objs := make(map[nsName]cached[T], len(items))
	for _, it := range items {
		u, ok := it.(*unstructured.Unstructured)
		if !ok {
			return fmt.Errorf("registrar/kube: %s cache: unexpected %T", c.kind, it)
		}
		o, err := c.decode(u)
		if err != nil {
			c.onErr(err)
			continue
		}
		objs[nsName{u.GetNamespace(), u.GetName()}] = cached[T]{obj: o, raw: u}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.objs, c.synced = objs, true
	c.setRVLocked(rv)
	return nil
}

func (c *objectCache[T]) Resync() error { return nil }

func (c *objectCache[T]) List() []any {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]any, 0, len(c.objs))
	for _, o := range c.objs {
		out = append(out, o.raw)
	}
	return out
}

func (c *objectCache[T]) ListKeys() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]string, 0, len(c.objs))
	for k := range c.objs {
		out = append(out, k.namespace+"/"+k.name)
	}
	return out
}

func (c *objectCache[T]) Get(obj any) (any, bool, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, false, fmt.Errorf("registrar/kube: %s cache: unexpected %T", c.kind, obj)
	}
	return c.GetByKey(u.GetNamespace() + "/" + u.GetName())
}

func (c *objectCache[T]) GetByKey(key string) (any, bool, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil, false, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	o, ok := c.objs[nsName{ns, name}]
	if !ok {
		return nil, false, nil
	}
	return o.raw, true, nil
}

// get returns a copy of the object and its raw form.
func (c *objectCache[T]) get(ns, name string) (T, *unstructured.Unstructured, bool) {
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
