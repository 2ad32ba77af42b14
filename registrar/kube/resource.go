package kube

import (
	"context"
	"errors"
	"fmt"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// resource is a registrar.Resource over one Istio kind: reads from the cache, writes to the
// API server.
type resource[T registrar.Object[T]] struct {
	s          *Store
	name       string // the plural resource name, for errors
	apiVersion string
	kind       string
	client     kapi.Resource
	cache      *objectCache[T]
	hasStatus  bool
}

var _ registrar.Resource[*registrar.WorkloadEntry] = (*resource[*registrar.WorkloadEntry])(nil)

// conflictRetries bounds the re-reads of an Update without resourceVersion: custom resources
// refuse unconditional updates, so the store supplies the latest version and retries a
// conflict with a fresh read.
const conflictRetries = 5

func (r *resource[T]) Get(_ context.Context, namespace, name string) (T, error) {
	o, _, ok := r.cache.get(namespace, name)
	if !ok {
		var zero T
		return zero, fmt.Errorf("registrar/kube: get %s %s/%s: %w", r.name, namespace, name, registrar.ErrNotFound)
	}
	return o, nil
}

func (r *resource[T]) List(_ context.Context, namespace string, opts registrar.ListOptions) ([]T, string, error) {
	items, rv := r.cache.list(namespace, func(m *registrar.ObjectMeta) bool {
		for k, v := range opts.LabelSelector {
			if got, ok := m.Labels[k]; !ok || got != v {
				return false
			}
		}
		return true
	})
	return items, rv, nil
}

func (r *resource[T]) encode(obj T) (map[string]any, error) {
	m, err := toMap(obj, r.apiVersion, r.kind)
	if err != nil {
		meta := obj.Meta()
		return nil, fmt.Errorf("registrar/kube: encode %s %s/%s: %w", r.name, meta.Namespace, meta.Name, err)
	}
	return m, nil
}

// written decodes what the API server returned for a write and waits until the cache has it,
// so that this process reads its own writes.
func (r *resource[T]) written(ctx context.Context, u kapi.Object) (T, error) {
	var zero T
	o, err := r.cache.decode(u)
	if err != nil {
		return zero, err
	}
	r.s.settle(ctx, r.cache.waitRV(ctx, r.s.opts.CacheWait, u.ResourceVersion()))
	return o, nil
}

func (r *resource[T]) Create(ctx context.Context, obj T) (T, error) {
	var zero T
	meta := obj.Meta()
	if meta.Name == "" {
		return zero, fmt.Errorf("registrar/kube: create %s: empty name", r.name)
	}
	m, err := r.encode(obj)
	if err != nil {
		return zero, err
	}
	u, err := r.client.Create(ctx, meta.Namespace, createBody(m))
	if err != nil {
		return zero, apiError("create", r.name, meta.Namespace, meta.Name, err)
	}
	return r.written(ctx, u)
}

func (r *resource[T]) Update(ctx context.Context, obj T) (T, error) {
	return r.update(ctx, obj, "update", func(base kapi.Object, m map[string]any, rv string) (kapi.Object, error) {
		return r.client.Update(ctx, updateBody(base, m, rv))
	})
}

func (r *resource[T]) UpdateStatus(ctx context.Context, obj T) (T, error) {
	if !r.hasStatus {
		var zero T
		return zero, fmt.Errorf("registrar/kube: %w: %s has no status the registrar writes", registrar.ErrNotFound, r.name)
	}
	return r.update(ctx, obj, "update status", func(base kapi.Object, m map[string]any, rv string) (kapi.Object, error) {
		return r.client.UpdateStatus(ctx, statusBody(base, m, rv))
	})
}

type putFunc func(base kapi.Object, m map[string]any, rv string) (kapi.Object, error)

// update writes obj over the stored object. The body starts from the object as last seen (the
// cache, or a GET when the cache does not have it or is behind), so that fields the
// registrar's types do not model survive. With obj's resourceVersion empty the update is
// unconditional: the latest version is supplied and a conflict re-read, a few times.
func (r *resource[T]) update(ctx context.Context, obj T, op string, put putFunc) (T, error) {
	var zero T
	meta := obj.Meta()
	m, err := r.encode(obj)
	if err != nil {
		return zero, err
	}
	_, base, ok := r.cache.get(meta.Namespace, meta.Name)
	for attempt := 0; ; attempt++ {
		if !ok || (meta.ResourceVersion == "" && attempt > 0) {
			base, err = r.client.Get(ctx, meta.Namespace, meta.Name)
			if err != nil {
				return zero, apiError(op, r.name, meta.Namespace, meta.Name, err)
			}
		}
		rv := meta.ResourceVersion
		if rv == "" {
			rv = base.ResourceVersion()
		}
		u, err := put(base, m, rv)
		if err == nil {
			return r.written(ctx, u)
		}
		err = apiError(op, r.name, meta.Namespace, meta.Name, err)
		if meta.ResourceVersion != "" || !errors.Is(err, registrar.ErrConflict) || attempt >= conflictRetries {
			return zero, err
		}
		ok = false
	}
}

func (r *resource[T]) Delete(ctx context.Context, namespace, name string, pre registrar.Preconditions) error {
	uid := pre.UID
	if cur, _, ok := r.cache.get(namespace, name); ok && uid == "" {
		uid = cur.Meta().UID
	}
	if err := r.client.Delete(ctx, namespace, name, kapi.Preconditions{UID: pre.UID, ResourceVersion: pre.ResourceVersion}); err != nil {
		return apiError("delete", r.name, namespace, name, err)
	}
	r.s.settle(ctx, r.cache.waitGone(ctx, r.s.opts.CacheWait, namespace, name, uid))
	return nil
}

// Watch watches the API server from resourceVersion. An empty one means "from now": the
// current version is read first (a one-item list), because a Kubernetes watch without a
// version starts by replaying every existing object as ADDED. A version the API server no
// longer has (410 Gone) ends the watch at once: the channel closes and the caller lists again.
func (r *resource[T]) Watch(ctx context.Context, namespace, resourceVersion string) (<-chan registrar.Event[T], error) {
	if resourceVersion == "" {
		l, err := r.client.List(ctx, namespace, kapi.ListOptions{Limit: 1})
		if err != nil {
			return nil, apiError("watch (current version)", r.name, namespace, "", err)
		}
		resourceVersion = l.Metadata.ResourceVersion
	}
	w, err := r.client.Watch(ctx, namespace, resourceVersion)
	if err != nil {
		return nil, apiError("watch", r.name, namespace, "", err)
	}
	ch := make(chan registrar.Event[T], 64)
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.s.ctx, cancel) // Close ends every watch too
	r.s.wg.Go(func() {
		defer close(ch)
		defer cancel()
		defer stop()
		defer w.Stop()
		r.pump(wctx, w, ch)
	})
	return ch, nil
}

// pump converts the API server's events until the watch or ctx ends.
func (r *resource[T]) pump(ctx context.Context, w *kapi.Watcher, ch chan<- registrar.Event[T]) {
	for {
		var ev kapi.Event
		var ok bool
		select {
		case ev, ok = <-w.C:
			if !ok {
				return
			}
		case <-ctx.Done():
			return
		}
		var typ registrar.EventType
		switch ev.Type {
		case "ADDED":
			typ = registrar.Added
		case "MODIFIED":
			typ = registrar.Modified
		case "DELETED":
			typ = registrar.Deleted
		case "ERROR":
			r.s.logError(fmt.Errorf("registrar/kube: watch %s: %w", r.name, kapi.StatusOf(ev.Object)))
			return
		default:
			continue // bookmarks
		}
		o, err := r.cache.decode(ev.Object)
		if err != nil {
			r.s.logError(err)
			continue
		}
		select {
		case ch <- registrar.Event[T]{Type: typ, Object: o}:
		case <-ctx.Done():
			return
		}
	}
}

// settle notes a write the cache did not show within CacheWait (reads may be stale for a while;
// never an error: the write itself succeeded).
func (s *Store) settle(ctx context.Context, seen bool) {
	if !seen && ctx.Err() == nil {
		s.cacheLag.Add(1)
	}
}
