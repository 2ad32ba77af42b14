package registrar

import (
	"context"
	"errors"
	"fmt"
	"maps"
)

// Sentinel errors of every Store. Implementations wrap them (errors.Is works); the Kubernetes
// store maps HTTP 404, 409 (conflict), 409 (AlreadyExists) and 410 onto them.
var (
	ErrNotFound      = errors.New("registrar: not found")
	ErrConflict      = errors.New("registrar: conflict: object was modified")
	ErrAlreadyExists = errors.New("registrar: already exists")
	// ErrGone is returned by Watch when the resource version asked for is too old: List again.
	ErrGone = errors.New("registrar: resource version too old")
)

// Store is where WorkloadEntries, WorkloadGroups and registrar Leases live: a directory (the file
// store of this package) or the Kubernetes API (package registrar/kube). It is shaped after the
// Kubernetes API so that the Kubernetes store is a thin translation.
type Store interface {
	WorkloadEntries() Resource[*WorkloadEntry]
	WorkloadGroups() Resource[*WorkloadGroup]
	Leases() Leases
}

// Resource is one kind of object in a Store. The contract, checked by registrar/storetest:
//
//   - Objects handed in and out are never retained or shared: callers may modify what they get.
//   - Get and List may be served from a cache (an informer) and be slightly stale; writes are
//     always checked against the authority, so staleness shows up as ErrConflict, never as a lost
//     write.
//   - Create fails with ErrAlreadyExists if the name is taken; it sets UID, ResourceVersion and
//     CreationTimestamp, and ignores the ResourceVersion it is given.
//   - Update replaces metadata (labels, annotations, owner references) and spec, never status.
//     A non-empty ResourceVersion must equal the stored one, else ErrConflict; an empty one
//     updates unconditionally (as in Kubernetes). ErrNotFound if the object does not exist.
//   - UpdateStatus replaces only status, with the same resourceVersion rule.
//   - Delete honours its preconditions (ErrConflict when they do not hold), ErrNotFound if absent.
//   - List with namespace "" lists every namespace, and only objects carrying every label of
//     opts.LabelSelector; it returns the resource version of the listing, from which Watch
//     continues without a gap.
//   - Watch sends every change after resourceVersion ("" = from now), in resource-version order,
//     for one namespace or all (""). "From now" sends no events for objects that already exist
//     (a Kubernetes store gets it by watching from a List's resourceVersion: an unset one would
//     replay every object as ADDED). The channel is closed when ctx ends or when the store gives
//     up on a slow watcher; the caller then lists and watches again. ErrGone if resourceVersion
//     is older than the store remembers.
type Resource[T Object[T]] interface {
	Get(ctx context.Context, namespace, name string) (T, error)
	List(ctx context.Context, namespace string, opts ListOptions) (items []T, resourceVersion string, err error)
	Create(ctx context.Context, obj T) (T, error)
	Update(ctx context.Context, obj T) (T, error)
	UpdateStatus(ctx context.Context, obj T) (T, error)
	Delete(ctx context.Context, namespace, name string, pre Preconditions) error
	Watch(ctx context.Context, namespace, resourceVersion string) (<-chan Event[T], error)
}

// Leases stores coordination.k8s.io/v1 Leases: get, create, renew (Update with the
// resourceVersion read, ErrConflict when someone else wrote in between).
type Leases interface {
	Get(ctx context.Context, namespace, name string) (*Lease, error)
	Create(ctx context.Context, l *Lease) (*Lease, error)
	Update(ctx context.Context, l *Lease) (*Lease, error)
}

// ListOptions narrow a List, as metav1.ListOptions does.
type ListOptions struct {
	// LabelSelector keeps objects whose labels include all of these (an equality selector).
	LabelSelector map[string]string
}

func (o ListOptions) matches(m *ObjectMeta) bool {
	for k, v := range o.LabelSelector {
		if got, ok := m.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Preconditions of a Delete, as in metav1.Preconditions: empty fields are not checked.
type Preconditions struct {
	UID             string
	ResourceVersion string
}

// EventType is the type of a watch event.
type EventType string

// Watch event types, as Kubernetes names them.
const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
)

// Event is one change seen by a watch. For Deleted, Object is the last state with the
// resourceVersion of the deletion.
type Event[T any] struct {
	Type   EventType
	Object T
}

// AnnotationSource marks the WorkloadGroups SyncGroups manages, so that it never deletes a
// group somebody else put in the store.
const AnnotationSource = "ewgate.io/source"

// SyncGroups makes the config-sourced WorkloadGroups in the store equal to groups: missing ones
// are created, changed ones updated (keeping their UID, so entries keep their owner), and
// config-sourced ones no longer listed deleted. In standalone mode the gateway calls it at start
// and on every config reload; connected VMs' entries follow through the registrar's group
// watch. It stops at the first error; calling it again resumes.
func SyncGroups(ctx context.Context, res Resource[*WorkloadGroup], groups []*WorkloadGroup) error {
	want := map[nsName]*WorkloadGroup{}
	for _, g := range groups {
		if !validName(g.Name, 253) || !validName(g.Namespace, 63) {
			return fmt.Errorf("registrar: workload group %q in namespace %q: not a valid Kubernetes name", g.Name, g.Namespace)
		}
		k := nsName{g.Namespace, g.Name}
		if _, dup := want[k]; dup {
			return fmt.Errorf("registrar: workload group %s listed twice", k)
		}
		c := g.DeepCopy()
		c.Annotations = maps.Clone(c.Annotations)
		if c.Annotations == nil {
			c.Annotations = map[string]string{}
		}
		c.Annotations[AnnotationSource] = "config"
		want[k] = c
	}
	have, _, err := res.List(ctx, "", ListOptions{})
	if err != nil {
		return fmt.Errorf("registrar: sync groups: %w", err)
	}
	for _, cur := range have {
		k := nsName{cur.Namespace, cur.Name}
		g, ok := want[k]
		delete(want, k)
		switch {
		case !ok && cur.Annotations[AnnotationSource] == "config":
			err = res.Delete(ctx, cur.Namespace, cur.Name, Preconditions{UID: cur.UID})
		case ok && !sameGroup(cur, g):
			g.ResourceVersion, g.UID = cur.ResourceVersion, cur.UID
			_, err = res.Update(ctx, g)
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("registrar: sync group %s: %w", k, err)
		}
	}
	for k, g := range want {
		if _, err := res.Create(ctx, g); err != nil {
			return fmt.Errorf("registrar: sync group %s: %w", k, err)
		}
	}
	return nil
}

func sameGroup(a, b *WorkloadGroup) bool {
	ea, eb := encodeGroup(a), encodeGroup(b)
	return ea == eb
}

// encodeGroup renders what SyncGroups manages of a group (labels, annotations, spec).
func encodeGroup(g *WorkloadGroup) string {
	c := &WorkloadGroup{Spec: g.Spec}
	c.Labels, c.Annotations = g.Labels, g.Annotations
	data, err := encodeObject(c, IstioAPIVersion, KindWorkloadGroup)
	if err != nil {
		return fmt.Sprint(g) // never equal to a successful encoding
	}
	return string(data)
}
