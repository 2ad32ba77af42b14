package registrar

import (
	"context"
	"errors"
	"fmt"
	"maps"
)

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
