package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// leases reads and writes coordination.k8s.io/v1 Leases directly: a replica renews its own and
// reads a dead owner's now and then, too few requests to be worth a watch (and RBAC on leases
// then needs only get, create and update).
type leases struct {
	client    kapi.Resource
	namespace string // if set, the only namespace allowed
}

var _ registrar.Leases = (*leases)(nil)

// microTime is the API's MicroTime: RFC 3339 with exactly six fractional digits.
const microTime = "2006-01-02T15:04:05.000000Z07:00"

// kubeLease is a coordination.k8s.io/v1 Lease as JSON. The registrar's ObjectMeta is
// Kubernetes-shaped already; the spec's times are MicroTime and its optional fields pointers.
type kubeLease struct {
	APIVersion string               `json:"apiVersion"`
	Kind       string               `json:"kind"`
	Metadata   registrar.ObjectMeta `json:"metadata"`
	Spec       struct {
		HolderIdentity       *string `json:"holderIdentity,omitempty"`
		LeaseDurationSeconds *int32  `json:"leaseDurationSeconds,omitempty"`
		AcquireTime          *string `json:"acquireTime,omitempty"`
		RenewTime            *string `json:"renewTime,omitempty"`
	} `json:"spec"`
}

func (l *leases) send(ctx context.Context, op string, in *kubeLease) (*registrar.Lease, error) {
	in.APIVersion, in.Kind = "coordination.k8s.io/v1", "Lease"
	var out kubeLease
	var err error
	if op == "create" {
		err = l.client.CreateSub(ctx, in.Metadata.Namespace, "", "", in, &out)
	} else {
		err = l.client.Put(ctx, in.Metadata.Namespace, in.Metadata.Name, in, &out)
	}
	if err != nil {
		return nil, apiError(op, "leases", in.Metadata.Namespace, in.Metadata.Name, err)
	}
	return leaseFromKube(op, &out)
}

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
	o, err := l.client.Get(ctx, namespace, name)
	if err != nil {
		return nil, apiError("get", "leases", namespace, name, err)
	}
	raw, err := json.Marshal(o)
	if err != nil {
		return nil, err
	}
	var k kubeLease
	if err := json.Unmarshal(raw, &k); err != nil {
		return nil, fmt.Errorf("registrar/kube: get lease %s/%s: %w", namespace, name, err)
	}
	return leaseFromKube("get", &k)
}

func (l *leases) Create(ctx context.Context, in *registrar.Lease) (*registrar.Lease, error) {
	if err := l.check("create", in.Namespace, in.Name); err != nil {
		return nil, err
	}
	k := leaseToKube(in)
	k.Metadata.ResourceVersion, k.Metadata.UID, k.Metadata.CreationTimestamp = "", "", time.Time{}
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
func leaseToKube(in *registrar.Lease) *kubeLease {
	k := &kubeLease{Metadata: in.ObjectMeta}
	k.Metadata.CreationTimestamp = time.Time{} // server-set; never written
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
		t := s.AcquireTime.UTC().Format(microTime)
		k.Spec.AcquireTime = &t
	}
	if !s.RenewTime.IsZero() {
		t := s.RenewTime.UTC().Format(microTime)
		k.Spec.RenewTime = &t
	}
	return k
}

func leaseFromKube(op string, k *kubeLease) (*registrar.Lease, error) {
	l := &registrar.Lease{ObjectMeta: k.Metadata}
	l.CreationTimestamp = l.CreationTimestamp.UTC()
	if k.Spec.HolderIdentity != nil {
		l.Spec.HolderIdentity = *k.Spec.HolderIdentity
	}
	if k.Spec.LeaseDurationSeconds != nil {
		l.Spec.LeaseDurationSeconds = *k.Spec.LeaseDurationSeconds
	}
	for _, t := range []struct {
		in  *string
		out *time.Time
	}{{k.Spec.AcquireTime, &l.Spec.AcquireTime}, {k.Spec.RenewTime, &l.Spec.RenewTime}} {
		if t.in == nil {
			continue
		}
		v, err := time.Parse(time.RFC3339Nano, *t.in)
		if err != nil {
			return nil, fmt.Errorf("registrar/kube: %s lease %s/%s: %w", op, k.Metadata.Namespace, k.Metadata.Name, err)
		}
		*t.out = v.UTC()
	}
	return l, nil
}
