package registrar

import (
	"maps"
	"slices"
	"time"
)

// API group, versions and kinds of the objects the registrar reads and writes. They are the
// Kubernetes names, so that the file store's YAML and the Kubernetes API agree.
const (
	IstioAPIVersion = "networking.istio.io/v1"
	LeaseAPIVersion = "coordination.k8s.io/v1"

	KindWorkloadEntry = "WorkloadEntry"
	KindWorkloadGroup = "WorkloadGroup"
	KindLease         = "Lease"
)

// ObjectMeta is the part of Kubernetes' metav1.ObjectMeta the registrar uses. ResourceVersion is
// opaque: compare it for equality only.
type ObjectMeta struct {
	Name              string            `json:"name" yaml:"name"`
	Namespace         string            `json:"namespace,omitempty" yaml:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty" yaml:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty" yaml:"resourceVersion,omitempty"`
	CreationTimestamp time.Time         `json:"creationTimestamp,omitzero" yaml:"creationTimestamp,omitempty"`
	Labels            map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty" yaml:"annotations,omitempty"`
	OwnerReferences   []OwnerReference  `json:"ownerReferences,omitempty" yaml:"ownerReferences,omitempty"`
}

// OwnerReference mirrors metav1.OwnerReference.
type OwnerReference struct {
	APIVersion         string `json:"apiVersion" yaml:"apiVersion"`
	Kind               string `json:"kind" yaml:"kind"`
	Name               string `json:"name" yaml:"name"`
	UID                string `json:"uid" yaml:"uid"`
	Controller         *bool  `json:"controller,omitempty" yaml:"controller,omitempty"`
	BlockOwnerDeletion *bool  `json:"blockOwnerDeletion,omitempty" yaml:"blockOwnerDeletion,omitempty"`
}

func (m ObjectMeta) clone() ObjectMeta {
	m.Labels = maps.Clone(m.Labels)
	m.Annotations = maps.Clone(m.Annotations)
	m.OwnerReferences = slices.Clone(m.OwnerReferences)
	for i, o := range m.OwnerReferences {
		m.OwnerReferences[i].Controller = cloneBool(o.Controller)
		m.OwnerReferences[i].BlockOwnerDeletion = cloneBool(o.BlockOwnerDeletion)
	}
	return m
}

func cloneBool(b *bool) *bool {
	if b == nil {
		return nil
	}
	v := *b
	return &v
}

// WorkloadEntry mirrors networking.istio.io/v1 WorkloadEntry.
type WorkloadEntry struct {
	ObjectMeta `json:"metadata" yaml:"metadata"`
	Spec       WorkloadEntrySpec `json:"spec" yaml:"spec"`
	Status     WorkloadStatus    `json:"status,omitzero" yaml:"status,omitempty"`
}

// WorkloadEntrySpec mirrors istio.networking.v1.WorkloadEntry. Locality is "region/zone/subzone".
type WorkloadEntrySpec struct {
	Address        string            `json:"address,omitempty" yaml:"address,omitempty"`
	Ports          map[string]uint32 `json:"ports,omitempty" yaml:"ports,omitempty"`
	Labels         map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Network        string            `json:"network,omitempty" yaml:"network,omitempty"`
	Locality       string            `json:"locality,omitempty" yaml:"locality,omitempty"`
	Weight         uint32            `json:"weight,omitempty" yaml:"weight,omitempty"`
	ServiceAccount string            `json:"serviceAccount,omitempty" yaml:"serviceAccount,omitempty"`
}

func (s WorkloadEntrySpec) clone() WorkloadEntrySpec {
	s.Ports = maps.Clone(s.Ports)
	s.Labels = maps.Clone(s.Labels)
	return s
}

// WorkloadStatus is the status of a WorkloadEntry: Istio's IstioStatus reduced to conditions.
type WorkloadStatus struct {
	Conditions []Condition `json:"conditions,omitempty" yaml:"conditions,omitempty"`
}

// Condition mirrors istio.meta.v1alpha1.IstioCondition. Status is "True", "False" or "Unknown".
type Condition struct {
	Type               string    `json:"type" yaml:"type"`
	Status             string    `json:"status" yaml:"status"`
	LastProbeTime      time.Time `json:"lastProbeTime,omitzero" yaml:"lastProbeTime,omitempty"`
	LastTransitionTime time.Time `json:"lastTransitionTime,omitzero" yaml:"lastTransitionTime,omitempty"`
	Reason             string    `json:"reason,omitempty" yaml:"reason,omitempty"`
	Message            string    `json:"message,omitempty" yaml:"message,omitempty"`
}

// ConditionHealthy is the condition istiod reads for entries with health checks enabled.
const ConditionHealthy = "Healthy"

// Condition returns the condition of the given type, or nil.
func (s WorkloadStatus) Condition(typ string) *Condition {
	for i := range s.Conditions {
		if s.Conditions[i].Type == typ {
			return &s.Conditions[i]
		}
	}
	return nil
}

// DeepCopy returns a copy sharing no maps or slices with e.
func (e *WorkloadEntry) DeepCopy() *WorkloadEntry {
	c := *e
	c.ObjectMeta = e.ObjectMeta.clone()
	c.Spec = e.Spec.clone()
	c.Status.Conditions = slices.Clone(e.Status.Conditions)
	return &c
}

// WorkloadGroup mirrors networking.istio.io/v1 WorkloadGroup.
type WorkloadGroup struct {
	ObjectMeta `json:"metadata" yaml:"metadata"`
	Spec       WorkloadGroupSpec `json:"spec" yaml:"spec"`
}

// WorkloadGroupSpec mirrors istio.networking.v1.WorkloadGroup.
type WorkloadGroupSpec struct {
	Metadata GroupMetadata     `json:"metadata,omitzero" yaml:"metadata,omitempty"`
	Template WorkloadEntrySpec `json:"template" yaml:"template"`
	Probe    *ReadinessProbe   `json:"probe,omitempty" yaml:"probe,omitempty"`
}

// GroupMetadata holds the labels and annotations a WorkloadGroup gives its entries.
type GroupMetadata struct {
	Labels      map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty" yaml:"annotations,omitempty"`
}

// ReadinessProbe mirrors istio.networking.v1.ReadinessProbe. The registrar never runs it: the
// VM's agent does, and reports through SetHealth.
type ReadinessProbe struct {
	InitialDelaySeconds int32          `json:"initialDelaySeconds,omitempty" yaml:"initialDelaySeconds,omitempty"`
	TimeoutSeconds      int32          `json:"timeoutSeconds,omitempty" yaml:"timeoutSeconds,omitempty"`
	PeriodSeconds       int32          `json:"periodSeconds,omitempty" yaml:"periodSeconds,omitempty"`
	SuccessThreshold    int32          `json:"successThreshold,omitempty" yaml:"successThreshold,omitempty"`
	FailureThreshold    int32          `json:"failureThreshold,omitempty" yaml:"failureThreshold,omitempty"`
	HTTPGet             *HTTPGetAction `json:"httpGet,omitempty" yaml:"httpGet,omitempty"`
	TCPSocket           *TCPAction     `json:"tcpSocket,omitempty" yaml:"tcpSocket,omitempty"`
	Exec                *ExecAction    `json:"exec,omitempty" yaml:"exec,omitempty"`
	GRPC                *GRPCAction    `json:"grpc,omitempty" yaml:"grpc,omitempty"`
}

// HTTPGetAction is an HTTP readiness check.
type HTTPGetAction struct {
	Path   string `json:"path,omitempty" yaml:"path,omitempty"`
	Port   uint32 `json:"port" yaml:"port"`
	Host   string `json:"host,omitempty" yaml:"host,omitempty"`
	Scheme string `json:"scheme,omitempty" yaml:"scheme,omitempty"`
	// HTTPHeaders are sent with the request (e.g. Host).
	HTTPHeaders []HTTPHeader `json:"httpHeaders,omitempty" yaml:"httpHeaders,omitempty"`
}

// HTTPHeader is one header of an HTTP readiness check.
type HTTPHeader struct {
	Name  string `json:"name" yaml:"name"`
	Value string `json:"value" yaml:"value"`
}

// GRPCAction is a gRPC health check (grpc.health.v1) readiness check.
type GRPCAction struct {
	Port    uint32 `json:"port" yaml:"port"`
	Service string `json:"service,omitempty" yaml:"service,omitempty"`
}

// TCPAction is a TCP connect readiness check.
type TCPAction struct {
	Host string `json:"host,omitempty" yaml:"host,omitempty"`
	Port uint32 `json:"port" yaml:"port"`
}

// ExecAction is a command readiness check.
type ExecAction struct {
	Command []string `json:"command,omitempty" yaml:"command,omitempty"`
}

// DeepCopy returns a copy sharing no maps or slices with g.
func (g *WorkloadGroup) DeepCopy() *WorkloadGroup {
	c := *g
	c.ObjectMeta = g.ObjectMeta.clone()
	c.Spec.Template = g.Spec.Template.clone()
	c.Spec.Metadata.Labels = maps.Clone(g.Spec.Metadata.Labels)
	c.Spec.Metadata.Annotations = maps.Clone(g.Spec.Metadata.Annotations)
	if g.Spec.Probe != nil {
		p := *g.Spec.Probe
		if p.Exec != nil {
			p.Exec = &ExecAction{Command: slices.Clone(p.Exec.Command)}
		}
		if p.HTTPGet != nil {
			h := *p.HTTPGet
			h.HTTPHeaders = slices.Clone(h.HTTPHeaders)
			p.HTTPGet = &h
		}
		if p.TCPSocket != nil {
			a := *p.TCPSocket
			p.TCPSocket = &a
		}
		if p.GRPC != nil {
			a := *p.GRPC
			p.GRPC = &a
		}
		c.Spec.Probe = &p
	}
	return &c
}

// Lease mirrors coordination.k8s.io/v1 Lease: a registrar replica proves it is alive by renewing
// its own Lease; entries whose controller's Lease has expired are taken over or cleaned.
type Lease struct {
	ObjectMeta `json:"metadata" yaml:"metadata"`
	Spec       LeaseSpec `json:"spec" yaml:"spec"`
}

// LeaseSpec mirrors coordination.k8s.io/v1 LeaseSpec.
type LeaseSpec struct {
	HolderIdentity       string    `json:"holderIdentity,omitempty" yaml:"holderIdentity,omitempty"`
	LeaseDurationSeconds int32     `json:"leaseDurationSeconds,omitempty" yaml:"leaseDurationSeconds,omitempty"`
	AcquireTime          time.Time `json:"acquireTime,omitzero" yaml:"acquireTime,omitempty"`
	RenewTime            time.Time `json:"renewTime,omitzero" yaml:"renewTime,omitempty"`
}

// Expired reports whether the lease has not been renewed within its duration at now.
func (l *Lease) Expired(now time.Time) bool {
	d := time.Duration(l.Spec.LeaseDurationSeconds) * time.Second
	return l.Spec.RenewTime.IsZero() || now.After(l.Spec.RenewTime.Add(d))
}

// DeepCopy returns a copy sharing no maps or slices with l.
func (l *Lease) DeepCopy() *Lease {
	c := *l
	c.ObjectMeta = l.ObjectMeta.clone()
	return &c
}

// Object is implemented by *WorkloadEntry, *WorkloadGroup and *Lease: what a Resource stores.
type Object[T any] interface {
	*WorkloadEntry | *WorkloadGroup | *Lease
	Meta() *ObjectMeta
	DeepCopy() T
}

// Meta returns the object's metadata, for generic code.
func (m *ObjectMeta) Meta() *ObjectMeta { return m }
