package registrar

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"time"
)

// Annotations the registrar writes. The istio.io ones are istiod's own, so that istiod and
// istioctl read ewgate's entries as auto-registered ones; the ewgate.io ones key an entry to its
// VM by identity rather than by IP (istio#43950, istio#44128).
const (
	AnnotationAutoRegistrationGroup = "istio.io/autoRegistrationGroup"
	AnnotationWorkloadController    = "istio.io/workloadController"
	AnnotationConnectedAt           = "istio.io/connectedAt"
	AnnotationDisconnectedAt        = "istio.io/disconnectedAt"
	AnnotationHealthChecksEnabled   = "proxy.istio.io/health-checks-enabled"
	AnnotationIdentity              = "ewgate.io/identity"
	AnnotationNode                  = "ewgate.io/node"
	AnnotationClaimedAddress        = "ewgate.io/claimed-address"

	// LabelVM is a hash of the workload key (namespace, group, identity, node) on the entry's
	// metadata (not its spec): a label selector finds a VM's entries under every address
	// without listing the namespace.
	LabelVM = "ewgate.io/vm"
)

// Errors of Connect: the gateway maps them onto gRPC codes at the stream edge.
var (
	// ErrGroupNotFound: no WorkloadGroup of that name in the identity's namespace
	// (FailedPrecondition, as istiod answers).
	ErrGroupNotFound = errors.New("registrar: workload group not found")
	// ErrDenied: the identity may not register into that group (PermissionDenied).
	ErrDenied = errors.New("registrar: identity not allowed in workload group")
	// ErrAddressRefused: the address policy refuses the VM's address (PermissionDenied).
	ErrAddressRefused = errors.New("registrar: address refused by policy")
	// ErrReservedLabel: the VM's LABELS set a reserved key (InvalidArgument).
	ErrReservedLabel = errors.New("registrar: reserved label")
	// ErrInvalidNode: the node metadata cannot make an entry (InvalidArgument).
	ErrInvalidNode = errors.New("registrar: invalid node metadata")
)

// Identity is a verified VM identity, as the authn package establishes it.
type Identity struct {
	Cluster        string `json:"cluster,omitempty"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	SPIFFEID       string `json:"spiffeID,omitempty"`
}

func (id Identity) String() string {
	if id.SPIFFEID != "" {
		return id.SPIFFEID
	}
	return "k8s://" + id.Cluster + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// Locality is the xDS node locality.
type Locality struct {
	Region, Zone, SubZone string
}

func (l Locality) String() string {
	parts := []string{l.Region, l.Zone, l.SubZone}
	for len(parts) > 0 && parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return strings.Join(parts, "/")
}

// Node is what the registrar needs of the VM's xDS node, as plain data (the xDS layer converts).
type Node struct {
	// ID is the xDS node id; pilot-agent's is "sidecar~<ip>~<host>.<ns>~<ns>.svc.cluster.local".
	ID string
	// AutoRegisterGroup is the AUTO_REGISTER_GROUP metadata: the WorkloadGroup's name.
	AutoRegisterGroup string
	// InstanceIPs is INSTANCE_IPS split at commas; the first one is the claimed address.
	InstanceIPs []string
	Network     string            // NETWORK
	Labels      map[string]string // LABELS
	ClusterID   string            // CLUSTER_ID
	// WorkloadName is WORKLOAD_NAME, shown in Registrations only.
	WorkloadName string
	Locality     Locality
	// HasReadinessProbe is set when the proxy config carries a readiness probe.
	HasReadinessProbe bool
}

// Request is one VM stream asking to be registered.
type Request struct {
	Identity Identity
	Node     Node
	// Source is the address the connection came from (used by the observed address policy and
	// recorded otherwise).
	Source netip.Addr
	// Time is when the stream started; zero means now.
	Time time.Time
}

// nodeKey is the part of a node id that survives an IP change: pilot-agent puts the IP in the
// second '~' field, which is dropped, so a VM that comes back with a new IP is the same VM.
func nodeKey(id string) string {
	parts := strings.Split(id, "~")
	if len(parts) == 4 {
		return parts[0] + "~" + parts[2] + "~" + parts[3]
	}
	return id
}

// workloadKey identifies a VM: namespace, group, identity and node key. Not its IP.
func workloadKey(ns, group string, id Identity, node string) string {
	return ns + "/" + group + "|" + id.String() + "|" + node
}

// vmLabel is LabelVM's value for a workload key: 32 hex digits of its SHA-256.
func vmLabel(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:16])
}

// EntryName is istiod's name for an auto-registered entry: <group>-<ip with ':' as '-'>
// [-<network>], cut from the front to 253 characters, then made a valid Kubernetes name.
func EntryName(group string, ip netip.Addr, network string) string {
	name := group + "-" + strings.ReplaceAll(ip.WithZone("").String(), ":", "-")
	if network != "" {
		name += "-" + network
	}
	if len(name) > 253 {
		name = name[len(name)-253:]
	}
	if name = sanitizeName(name); name == "" { // only for names istiod could not have made either
		name = sanitizeName("vm-" + strings.ReplaceAll(ip.WithZone("").String(), ":", "-"))
	}
	return name
}

// validNetwork accepts what can be a Kubernetes label value (topology.istio.io/network is one).
func validNetwork(s string) bool {
	if len(s) > 63 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// sanitizeName makes s a DNS subdomain: lower case, [a-z0-9-.], each dot-separated label
// starting and ending with an alphanumeric.
func sanitizeName(s string) string {
	b := []byte(s) // byte by byte: never longer than s, whatever its encoding
	for i, c := range b {
		switch {
		case c >= 'A' && c <= 'Z':
			b[i] = c + 'a' - 'A'
		case !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.'):
			b[i] = '-'
		}
	}
	var labels []string
	for l := range strings.SplitSeq(string(b), ".") {
		if l = strings.Trim(l, "-"); l != "" {
			labels = append(labels, l)
		}
	}
	return strings.Join(labels, ".")
}

func validName(s string, maxLen int) bool {
	return s != "" && len(s) <= maxLen && sanitizeName(s) == s
}

// chooseAddress applies the address policy and returns the entry's address and the claimed one.
func (r *Registrar) chooseAddress(req *Request) (addr, claimed netip.Addr, err error) {
	if len(req.Node.InstanceIPs) > 0 {
		claimed, err = netip.ParseAddr(strings.TrimSpace(req.Node.InstanceIPs[0]))
		if err != nil {
			return addr, claimed, fmt.Errorf("%w: INSTANCE_IPS %q", ErrInvalidNode, req.Node.InstanceIPs[0])
		}
		claimed = claimed.Unmap()
	}
	switch r.cfg.AddressPolicy {
	case AddressObserved:
		if !req.Source.IsValid() {
			return addr, claimed, fmt.Errorf("%w: no source address to observe", ErrAddressRefused)
		}
		return req.Source.Unmap().WithZone(""), claimed, nil
	case AddressClaimedInCIDRs:
		if !claimed.IsValid() {
			return addr, claimed, fmt.Errorf("%w: no INSTANCE_IPS", ErrInvalidNode)
		}
		for _, p := range r.cidrs {
			if p.Contains(claimed) {
				return claimed, claimed, nil
			}
		}
		return addr, claimed, fmt.Errorf("%w: %s is outside allowed_cidrs", ErrAddressRefused, claimed)
	default:
		if !claimed.IsValid() {
			return addr, claimed, fmt.Errorf("%w: no INSTANCE_IPS", ErrInvalidNode)
		}
		return claimed, claimed, nil
	}
}

// checkLabels refuses reserved and malformed label keys from the VM.
func (r *Registrar) checkLabels(labels map[string]string) error {
	for k, v := range labels {
		for _, p := range r.cfg.ReservedLabels {
			if k == p || strings.HasSuffix(p, "*") && strings.HasPrefix(k, strings.TrimSuffix(p, "*")) {
				return fmt.Errorf("%w: %q (reserved by %q)", ErrReservedLabel, k, p)
			}
		}
		if k == "" || len(k) > 316 || len(v) > 63 {
			return fmt.Errorf("%w: label %q=%q is not a valid Kubernetes label", ErrInvalidNode, k, v)
		}
	}
	return nil
}

// checkIdentity applies istiod's rules: same namespace as the group, and the template's service
// account if it names one; plus the cluster the VM claims must be the one that vouched for it.
func checkIdentity(id Identity, node *Node, g *WorkloadGroup) error {
	if id.Namespace != g.Namespace {
		return fmt.Errorf("%w: namespace %q, group in %q", ErrDenied, id.Namespace, g.Namespace)
	}
	if sa := g.Spec.Template.ServiceAccount; sa != "" && sa != id.ServiceAccount {
		return fmt.Errorf("%w: service account %q, group wants %q", ErrDenied, id.ServiceAccount, sa)
	}
	if node.ClusterID != "" && id.Cluster != "" && node.ClusterID != id.Cluster {
		return fmt.Errorf("%w: CLUSTER_ID %q, identity from cluster %q", ErrDenied, node.ClusterID, id.Cluster)
	}
	return nil
}

// desiredEntry builds the entry for w from its group: template < group metadata < VM labels for
// labels; the group's annotations under the registrar's own.
func (r *Registrar) desiredEntry(g *WorkloadGroup, w *workload) *WorkloadEntry {
	spec := g.Spec.Template.clone()
	labels := maps.Clone(spec.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	maps.Copy(labels, g.Spec.Metadata.Labels)
	maps.Copy(labels, w.node.Labels)
	delete(labels, "istio-locality") // istiod drops it too: the locality is in spec.locality
	spec.Labels = labels
	spec.Address = w.addr.String()
	if w.node.Network != "" {
		spec.Network = w.node.Network
	}
	if loc := w.node.Locality.String(); loc != "" {
		spec.Locality = loc
	}
	if spec.ServiceAccount == "" {
		spec.ServiceAccount = w.id.ServiceAccount // non-empty service account = mTLS endpoint
	}
	ann := maps.Clone(g.Spec.Metadata.Annotations)
	if ann == nil {
		ann = map[string]string{}
	}
	ann[AnnotationAutoRegistrationGroup] = g.Name
	ann[AnnotationWorkloadController] = r.cfg.Instance
	ann[AnnotationConnectedAt] = w.connectedAt.UTC().Format(time.RFC3339Nano)
	ann[AnnotationIdentity] = w.id.String()
	ann[AnnotationNode] = nodeKey(w.node.ID)
	if w.node.HasReadinessProbe {
		ann[AnnotationHealthChecksEnabled] = "true"
	}
	if w.claimed.IsValid() && w.claimed != w.addr {
		ann[AnnotationClaimedAddress] = w.claimed.String()
	}
	meta := maps.Clone(labels)
	meta[LabelVM] = vmLabel(w.key)
	yes := true
	return &WorkloadEntry{
		ObjectMeta: ObjectMeta{
			Name: w.entryName, Namespace: w.ns,
			Labels: meta, Annotations: ann,
			OwnerReferences: []OwnerReference{{
				APIVersion: IstioAPIVersion, Kind: KindWorkloadGroup,
				Name: g.Name, UID: g.UID, Controller: &yes,
			}},
		},
		Spec: spec,
	}
}

// sameContent reports whether a and b agree on everything the registrar manages.
func sameContent(a, b *WorkloadEntry) bool {
	return maps.Equal(a.Labels, b.Labels) && maps.Equal(a.Annotations, b.Annotations) &&
		sameOwners(a.OwnerReferences, b.OwnerReferences) && sameSpec(a.Spec, b.Spec)
}

func sameOwners(a, b []OwnerReference) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.APIVersion != y.APIVersion || x.Kind != y.Kind || x.Name != y.Name || x.UID != y.UID ||
			(x.Controller != nil && *x.Controller) != (y.Controller != nil && *y.Controller) {
			return false
		}
	}
	return true
}

func sameSpec(a, b WorkloadEntrySpec) bool {
	return a.Address == b.Address && a.Network == b.Network && a.Locality == b.Locality &&
		a.Weight == b.Weight && a.ServiceAccount == b.ServiceAccount &&
		maps.Equal(a.Ports, b.Ports) && maps.Equal(a.Labels, b.Labels)
}

// parseTime reads an RFC3339Nano annotation; absent or malformed reads as zero.
func parseTime(ann map[string]string, key string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, ann[key])
	if err != nil {
		return time.Time{}
	}
	return t
}
