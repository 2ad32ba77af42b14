package registrar

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Watch buffering: a watcher that falls this far behind is dropped (its channel closed), as the
// Kubernetes API server drops slow watchers; it then lists and watches again.
const (
	watchBuffer = 1024
	historySize = 4096
)

type nsName struct{ namespace, name string }

func (k nsName) String() string { return k.namespace + "/" + k.name }

// persistFunc queues obj (deleted when del) for durable storage and returns at once; done is
// called (from another goroutine, in the order of the persist calls) once it is durable or has
// failed. The change is made visible only then.
type persistFunc[T any] func(obj T, del bool, done func(error)) error

// memResource is an in-memory Resource with a watch history: the whole of the memory store and
// the index of the file store, which adds persistence through persist.
type memResource[T Object[T]] struct {
	kind    string
	rv      *atomic.Uint64 // shared by the resources of one store, as etcd's revision is
	persist persistFunc[T] // nil: memory only
	now     func() time.Time

	mu      sync.Mutex
	written *sync.Cond      // on mu: a pending write finished
	pending map[nsName]bool // keys with a write on its way to disk
	objs    map[nsName]T
	// byLabel indexes objs by the value of one label (indexLabel), so that a List selecting on
	// it (the registrar looks up a VM's entries by LabelVM on every first write) does not scan
	// every object.
	indexLabel string
	byLabel    map[string]map[nsName]struct{}
	hist       []Event[T]
	trimmed    uint64 // highest resource version dropped from hist
	watchers   map[*watcher[T]]struct{}
}

type watcher[T any] struct {
	namespace string
	ch        chan Event[T]
	stop      func() bool
}

func newMemResource[T Object[T]](kind string, rv *atomic.Uint64, p persistFunc[T]) *memResource[T] {
	r := &memResource[T]{
		kind: kind, rv: rv, persist: p, now: time.Now,
		pending: map[nsName]bool{}, objs: map[nsName]T{}, watchers: map[*watcher[T]]struct{}{},
	}
	r.written = sync.NewCond(&r.mu)
	if kind == KindWorkloadEntry {
		r.indexLabel, r.byLabel = LabelVM, map[string]map[nsName]struct{}{}
	}
	return r
}

// put and remove keep objs and byLabel together. Called with r.mu held.
func (r *memResource[T]) put(k nsName, o T) {
	if old, ok := r.objs[k]; ok {
		r.unindex(k, old)
	}
	r.objs[k] = o
	if v, ok := o.Meta().Labels[r.indexLabel]; ok && r.byLabel != nil {
		set := r.byLabel[v]
		if set == nil {
			set = map[nsName]struct{}{}
			r.byLabel[v] = set
		}
		set[k] = struct{}{}
	}
}

func (r *memResource[T]) remove(k nsName) {
	if old, ok := r.objs[k]; ok {
		r.unindex(k, old)
		delete(r.objs, k)
	}
}

func (r *memResource[T]) unindex(k nsName, o T) {
	if v, ok := o.Meta().Labels[r.indexLabel]; ok && r.byLabel != nil {
		delete(r.byLabel[v], k)
		if len(r.byLabel[v]) == 0 {
			delete(r.byLabel, v)
		}
	}
}

// candidates returns the keys a List with opts may return: those of the index when opts
// selects on the indexed label, else nil and false (scan everything).
func (r *memResource[T]) candidates(opts ListOptions) (map[nsName]struct{}, bool) {
	if r.byLabel == nil {
		return nil, false
	}
	v, ok := opts.LabelSelector[r.indexLabel]
	if !ok {
		return nil, false
	}
	return r.byLabel[v], true
}

// lockKey takes r.mu once no write to k is on its way to disk: a write checks the state its
// predecessor left. Writes to other keys go on meanwhile, and share the store's syncs.
func (r *memResource[T]) lockKey(k nsName) {
	r.mu.Lock()
	for r.pending[k] {
		r.written.Wait()
	}
}

func (r *memResource[T]) errorf(err error, k nsName) error {
	return fmt.Errorf("%w: %s %s", err, r.kind, k)
}

func (r *memResource[T]) Get(_ context.Context, namespace, name string) (T, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := nsName{namespace, name}
	o, ok := r.objs[k]
	if !ok {
		var zero T
		return zero, r.errorf(ErrNotFound, k)
	}
	return o.DeepCopy(), nil
}

func (r *memResource[T]) List(_ context.Context, namespace string, opts ListOptions) ([]T, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []T
	keep := func(k nsName, o T) {
		if (namespace == "" || k.namespace == namespace) && opts.matches(o.Meta()) {
			out = append(out, o.DeepCopy())
		}
	}
	if keys, ok := r.candidates(opts); ok {
		for k := range keys {
			keep(k, r.objs[k])
		}
	} else {
		for k, o := range r.objs {
			keep(k, o)
		}
	}
	slices.SortFunc(out, func(a, b T) int {
		return compareKeys(a.Meta(), b.Meta())
	})
	return out, strconv.FormatUint(r.rv.Load(), 10), nil
}

func compareKeys(a, b *ObjectMeta) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}

func (r *memResource[T]) Create(_ context.Context, obj T) (T, error) {
	var zero T
	m := obj.Meta()
	k := nsName{m.Namespace, m.Name}
	if m.Name == "" {
		return zero, fmt.Errorf("registrar: create %s: empty name", r.kind)
	}
	r.lockKey(k)
	defer r.mu.Unlock()
	if _, ok := r.objs[k]; ok {
		return zero, r.errorf(ErrAlreadyExists, k)
	}
	o := obj.DeepCopy()
	om := o.Meta()
	om.UID = newUID()
	om.CreationTimestamp = r.now().UTC().Truncate(time.Second)
	return r.commit(k, o, Added)
}

func (r *memResource[T]) Update(_ context.Context, obj T) (T, error) {
	return r.update(obj, func(cur, next T) T {
		setStatus(next, cur) // status is only written through UpdateStatus
		return next
	})
}

func (r *memResource[T]) UpdateStatus(_ context.Context, obj T) (T, error) {
	var zero T
	if _, ok := any(obj).(*WorkloadEntry); !ok {
		return zero, fmt.Errorf("%w: %s has no status subresource", ErrNotFound, r.kind)
	}
	return r.update(obj, func(cur, next T) T {
		o := cur.DeepCopy()
		setStatus(o, next)
		return o
	})
}

// update checks obj's resource version and UID against the stored object and commits
// merge(stored, copy of obj) with the stored identity fields.
func (r *memResource[T]) update(obj T, merge func(cur, next T) T) (T, error) {
	var zero T
	m := obj.Meta()
	k := nsName{m.Namespace, m.Name}
	r.lockKey(k)
	defer r.mu.Unlock()
	cur, ok := r.objs[k]
	if !ok {
		return zero, r.errorf(ErrNotFound, k)
	}
	cm := cur.Meta()
	if (m.ResourceVersion != "" && m.ResourceVersion != cm.ResourceVersion) ||
		(m.UID != "" && m.UID != cm.UID) {
		return zero, r.errorf(ErrConflict, k)
	}
	o := merge(cur, obj.DeepCopy())
	om := o.Meta()
	om.UID, om.CreationTimestamp = cm.UID, cm.CreationTimestamp
	return r.commit(k, o, Modified)
}

func (r *memResource[T]) Delete(_ context.Context, namespace, name string, pre Preconditions) error {
	k := nsName{namespace, name}
	r.lockKey(k)
	defer r.mu.Unlock()
	cur, ok := r.objs[k]
	if !ok {
		return r.errorf(ErrNotFound, k)
	}
	cm := cur.Meta()
	if (pre.UID != "" && pre.UID != cm.UID) ||
		(pre.ResourceVersion != "" && pre.ResourceVersion != cm.ResourceVersion) {
		return r.errorf(ErrConflict, k)
	}
	o := cur.DeepCopy()
	if _, err := r.commit(k, o, Deleted); err != nil {
		return err
	}
	return nil
}

// commit persists o, makes it visible and tells the watchers. Called with r.mu held; with a
// persist function it lets go of r.mu while o goes to disk (k stays pending meanwhile).
func (r *memResource[T]) commit(k nsName, o T, typ EventType) (T, error) {
	var zero T
	rv := r.rv.Add(1)
	o.Meta().ResourceVersion = strconv.FormatUint(rv, 10)
	if r.persist == nil {
		r.apply(k, o, typ)
		return o.DeepCopy(), nil
	}
	result := make(chan error, 1)
	err := r.persist(o, typ == Deleted, func(err error) {
		// Called in persist order, so watchers and the history see resource versions in order.
		r.mu.Lock()
		delete(r.pending, k)
		if err == nil {
			r.apply(k, o, typ)
		}
		r.written.Broadcast()
		r.mu.Unlock()
		result <- err
	})
	if err == nil {
		r.pending[k] = true
		r.mu.Unlock()
		err = <-result
		r.mu.Lock()
	}
	if err != nil {
		return zero, fmt.Errorf("registrar: write %s %s: %w", r.kind, k, err)
	}
	return o.DeepCopy(), nil
}

// apply makes o visible and tells the watchers. Called with r.mu held.
func (r *memResource[T]) apply(k nsName, o T, typ EventType) {
	if typ == Deleted {
		r.remove(k)
	} else {
		r.put(k, o)
	}
	ev := Event[T]{Type: typ, Object: o}
	r.hist = append(r.hist, ev)
	if len(r.hist) > historySize {
		drop := len(r.hist) - historySize/2
		r.trimmed = rvOf(r.hist[drop-1].Object)
		r.hist = slices.Delete(r.hist, 0, drop)
	}
	for w := range r.watchers {
		if w.namespace == "" || w.namespace == k.namespace {
			r.send(w, ev)
		}
	}
}

// send delivers ev without blocking; a watcher whose buffer is full is dropped.
func (r *memResource[T]) send(w *watcher[T], ev Event[T]) {
	select {
	case w.ch <- Event[T]{Type: ev.Type, Object: ev.Object.DeepCopy()}:
	default:
		r.dropLocked(w)
	}
}

func (r *memResource[T]) dropLocked(w *watcher[T]) {
	if _, ok := r.watchers[w]; ok {
		delete(r.watchers, w)
		w.stop()
		close(w.ch)
	}
}

func rvOf[T Object[T]](o T) uint64 {
	v, _ := strconv.ParseUint(o.Meta().ResourceVersion, 10, 64)
	return v
}

func (r *memResource[T]) Watch(ctx context.Context, namespace, resourceVersion string) (<-chan Event[T], error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var replay []Event[T]
	if resourceVersion != "" {
		from, err := strconv.ParseUint(resourceVersion, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("registrar: watch %s: bad resource version %q", r.kind, resourceVersion)
		}
		if from < r.trimmed {
			return nil, fmt.Errorf("%w: %s watch from %d, oldest kept %d", ErrGone, r.kind, from, r.trimmed)
		}
		for _, ev := range r.hist {
			if rvOf(ev.Object) > from && (namespace == "" || ev.Object.Meta().Namespace == namespace) {
				replay = append(replay, ev)
			}
		}
	}
	w := &watcher[T]{namespace: namespace, ch: make(chan Event[T], watchBuffer+len(replay))}
	for _, ev := range replay {
		w.ch <- Event[T]{Type: ev.Type, Object: ev.Object.DeepCopy()}
	}
	r.watchers[w] = struct{}{}
	w.stop = context.AfterFunc(ctx, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.dropLocked(w)
	})
	return w.ch, nil
}

// load puts an object read from durable storage into the index, without an event.
func (r *memResource[T]) load(o T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := o.Meta()
	r.put(nsName{m.Namespace, m.Name}, o)
	if v := rvOf(o); v > r.trimmed {
		r.trimmed = v // nothing before a restart can be replayed
	}
}

func setStatus[T Object[T]](dst, src T) {
	if d, ok := any(dst).(*WorkloadEntry); ok {
		s := any(src).(*WorkloadEntry)
		d.Status.Conditions = slices.Clone(s.Status.Conditions)
	}
}

func newUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
