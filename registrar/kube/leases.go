package kube

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/ewgate/ewgate/registrar"
)

// leases reads and writes coordination.k8s.io/v1 Leases directly: a replica renews its own and
// reads a dead owner's now and then, too few requests to be worth a watch (and RBAC on leases
// then needs only get, create and update).
//
// Through the dynamic client, not client-go's typed one: a typed client links
// k8s.io/client-go/kubernetes/scheme, which registers every built-in API group at start-up and
// keeps about 14 MiB of the binary resident in every gateway, kube store or not.
type leases struct {
	client    dynamic.NamespaceableResourceInterface
	namespace string // if set, the only namespace allowed
}

var leasesGVR = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}

func (l *leases) send(ctx context.Context, op string, in *coordinationv1.Lease) (*registrar.Lease, error) {
	in.APIVersion, in.Kind = "coordination.k8s.io/v1", "Lease"
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(in)
	if err != nil {
		return nil, fmt.Errorf("registrar/kube: %s lease %s/%s: %w", op, in.Namespace, in.Name, err)
	}
	u := &unstructured.Unstructured{Object: obj}
	c := l.client.Namespace(in.Namespace)
	if op == "create" {
		u, err = c.Create(ctx, u, metav1.CreateOptions{})
	} else {
		u, err = c.Update(ctx, u, metav1.UpdateOptions{})
	}
	if err != nil {
		return nil, apiError(op, "leases", in.Namespace, in.Name, err)
	}
	return leaseFromUnstructured(op, u)
}

func leaseFromUnstructured(op string, u *unstructured.Unstructured) (*registrar.Lease, error) {
	var k coordinationv1.Lease
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &k); err != nil {
		return nil, fmt.Errorf("registrar/kube: %s lease %s/%s: %w", op, u.GetNamespace(), u.GetName(), err)
	}
	return leaseFromKube(&k), nil
}

var _ registrar.Leases = (*leases)(nil)

func (l *leases) check(op, ns, name string) error {
	if l.namespace != "" && ns != l.namespace {
		return fmt.Errorf("registrar/kube: %s lease %s/%s: the store's leases live in namespace %q (registrar.lease_namespace and the store's LeaseNamespace must agree)", op, ns, name, l.namespace)
	}
	return nil
}

func (l *leases) Get(ctx context.Context, namespace, name string) (*registrar.Lease, error) {
	if err := l.check("get", namespace, name); err != nil {
		return nil, err
	}
	u, err := l.client.Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, apiError("get", "leases", namespace, name, err)
	}
	return leaseFromUnstructured("get", u)
}

func (l *leases) Create(ctx context.Context, in *registrar.Lease) (*registrar.Lease, error) {
	if err := l.check("create", in.Namespace, in.Name); err != nil {
		return nil, err
	}
	k := leaseToKube(in)
	k.ResourceVersion, k.UID, k.CreationTimestamp = "", "", metav1.Time{}
	return l.send(ctx, "create", k)
}

func (l *leases) Update(ctx context.Context, in *registrar.Lease) (*registrar.Lease, error) {
	if err := l.check("update", in.Namespace, in.Name); err != nil {
		return nil, err
	}
	return l.send(ctx, "update", leaseToKube(in))
}

// leaseToKube converts a registrar Lease. Kubernetes keeps acquire and renew times in
// microseconds (MicroTime): finer precision is lost on the way.
func leaseToKube(in *registrar.Lease) *coordinationv1.Lease {
	k := &coordinationv1.Lease{ObjectMeta: metaToKube(in.ObjectMeta)}
	s := in.Spec
	if s.HolderIdentity != "" {
		h := s.HolderIdentity
		k.Spec.HolderIdentity = &h
	}
	if s.LeaseDurationSeconds != 0 {
		d := s.LeaseDurationSeconds
		k.Spec.LeaseDurationSeconds = &d
	}
	if !s.AcquireTime.IsZero() {
		t := metav1.NewMicroTime(s.AcquireTime)
		k.Spec.AcquireTime = &t
	}
	if !s.RenewTime.IsZero() {
		t := metav1.NewMicroTime(s.RenewTime)
		k.Spec.RenewTime = &t
	}
	return k
}

func leaseFromKube(k *coordinationv1.Lease) *registrar.Lease {
	l := &registrar.Lease{ObjectMeta: metaFromKube(k.ObjectMeta)}
	if k.Spec.HolderIdentity != nil {
		l.Spec.HolderIdentity = *k.Spec.HolderIdentity
	}
	if k.Spec.LeaseDurationSeconds != nil {
		l.Spec.LeaseDurationSeconds = *k.Spec.LeaseDurationSeconds
	}
	if k.Spec.AcquireTime != nil {
		l.Spec.AcquireTime = k.Spec.AcquireTime.UTC()
	}
	if k.Spec.RenewTime != nil {
		l.Spec.RenewTime = k.Spec.RenewTime.UTC()
	}
	return l
}

func metaToKube(m registrar.ObjectMeta) metav1.ObjectMeta {
	k := metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, ResourceVersion: m.ResourceVersion,
		Labels: m.Labels, Annotations: m.Annotations,
	}
	k.UID = k8sUID(m.UID)
	for _, o := range m.OwnerReferences {
		k.OwnerReferences = append(k.OwnerReferences, metav1.OwnerReference{
			APIVersion: o.APIVersion, Kind: o.Kind, Name: o.Name, UID: k8sUID(o.UID),
			Controller: o.Controller, BlockOwnerDeletion: o.BlockOwnerDeletion,
		})
	}
	return k
}

func metaFromKube(k metav1.ObjectMeta) registrar.ObjectMeta {
	m := registrar.ObjectMeta{
		Name: k.Name, Namespace: k.Namespace, UID: string(k.UID), ResourceVersion: k.ResourceVersion,
		CreationTimestamp: k.CreationTimestamp.UTC(), Labels: k.Labels, Annotations: k.Annotations,
	}
	for _, o := range k.OwnerReferences {
		m.OwnerReferences = append(m.OwnerReferences, registrar.OwnerReference{
			APIVersion: o.APIVersion, Kind: o.Kind, Name: o.Name, UID: string(o.UID),
			Controller: o.Controller, BlockOwnerDeletion: o.BlockOwnerDeletion,
		})
	}
	return m
}

func k8sUID(s string) k8stypes.UID { return k8stypes.UID(s) }
