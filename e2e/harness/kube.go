package harness

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// The Istio resources the scenarios use, at the CRDs' storage version.
var (
	WorkloadGroupGVR   = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadgroups"}
	WorkloadEntryGVR   = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}
	ServiceEntryGVR    = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "serviceentries"}
	GatewayGVR         = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "gateways"}
	DestinationRuleGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
)

var kinds = map[schema.GroupVersionResource]string{
	WorkloadGroupGVR:   "WorkloadGroup",
	WorkloadEntryGVR:   "WorkloadEntry",
	ServiceEntryGVR:    "ServiceEntry",
	GatewayGVR:         "Gateway",
	DestinationRuleGVR: "DestinationRule",
}

// ApplyCRDs creates every CustomResourceDefinition in the multi-document YAML file (existing ones
// are left alone) and waits until each is Established. It returns their names.
func (a *APIServer) ApplyCRDs(ctx context.Context, path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("harness: crds: %w", err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 64<<10)
	var names []string
	for i := 0; i < 1000; i++ {
		var crd apiextv1.CustomResourceDefinition
		if err := dec.Decode(&crd); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("harness: crds: document %d: %w", i, err)
		}
		if crd.Kind != "CustomResourceDefinition" {
			continue
		}
		_, err := a.APIExt.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("harness: crd %s: %w", crd.Name, err)
		}
		names = append(names, crd.Name)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("harness: crds: no CustomResourceDefinition in %s", path)
	}
	for _, n := range names {
		if err := a.waitEstablished(ctx, n); err != nil {
			return nil, err
		}
	}
	return names, nil
}

func (a *APIServer) waitEstablished(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err := Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		crd, err := a.APIExt.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range crd.Status.Conditions {
			if c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue {
				return true, nil
			}
		}
		return false, fmt.Errorf("not established yet")
	})
	if err != nil {
		return fmt.Errorf("harness: crd %s: %w", name, err)
	}
	return nil
}

// CreateNamespace creates a namespace (an existing one is fine). There is no namespace
// controller here (no kube-controller-manager): deleted namespaces stay Terminating, so tests use
// fresh names instead of deleting.
func (a *APIServer) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	_, err := a.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("harness: namespace %s: %w", name, err)
	}
	return nil
}

// CreateServiceAccount creates a service account (an existing one is returned as is).
func (a *APIServer) CreateServiceAccount(ctx context.Context, ns, name string) (*corev1.ServiceAccount, error) {
	sa, err := a.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		sa, err = a.Kube.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("harness: service account %s/%s: %w", ns, name, err)
	}
	return sa, nil
}

// Token mints a real service-account token with the TokenRequest API. ttl must be at least
// 10 minutes (the apiserver's minimum).
func (a *APIServer) Token(ctx context.Context, ns, sa string, ttl time.Duration, audiences ...string) (string, error) {
	secs := int64(ttl / time.Second)
	tr, err := a.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("harness: token for %s/%s: %w", ns, sa, err)
	}
	return tr.Status.Token, nil
}

// IstioToken mints a VM token as `istioctl x workload entry configure` does: audience istio-ca,
// one hour.
func (a *APIServer) IstioToken(ctx context.Context, ns, sa string) (string, error) {
	return a.Token(ctx, ns, sa, time.Hour, "istio-ca")
}

// JWTClaims decodes (without verifying) the payload of a JWT. Never log the token itself.
func JWTClaims(token string) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("harness: jwt: %d parts", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("harness: jwt payload: %w", err)
	}
	var claims map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil {
		return nil, fmt.Errorf("harness: jwt payload: %w", err)
	}
	return claims, nil
}

// AllowAnonymousOIDCDiscovery binds system:service-account-issuer-discovery to
// system:unauthenticated, so /.well-known/openid-configuration and /openid/v1/jwks answer
// without credentials (as managed clusters do).
func (a *APIServer) AllowAnonymousOIDCDiscovery(ctx context.Context) error {
	_, err := a.Kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "ewgate-e2e-anonymous-oidc-discovery"},
		RoleRef: rbacv1.RoleRef{
			APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole",
			Name: "system:service-account-issuer-discovery",
		},
		Subjects: []rbacv1.Subject{{
			APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:unauthenticated",
		}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("harness: oidc discovery binding: %w", err)
	}
	return nil
}

// Istio builds an unstructured Istio object of the resource's kind.
func Istio(gvr schema.GroupVersionResource, ns, name string, labels map[string]string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(gvr.GroupVersion().String())
	u.SetKind(kinds[gvr])
	u.SetNamespace(ns)
	u.SetName(name)
	if len(labels) > 0 {
		u.SetLabels(labels)
	}
	return u
}

// Create creates an object of the resource gvr.
func (a *APIServer) Create(ctx context.Context, gvr schema.GroupVersionResource, obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	out, err := a.Dynamic.Resource(gvr).Namespace(obj.GetNamespace()).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("harness: create %s %s/%s: %w", gvr.Resource, obj.GetNamespace(), obj.GetName(), err)
	}
	return out, nil
}

// Delete deletes an object; a missing one is not an error.
func (a *APIServer) Delete(ctx context.Context, gvr schema.GroupVersionResource, ns, name string) error {
	err := a.Dynamic.Resource(gvr).Namespace(ns).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("harness: delete %s %s/%s: %w", gvr.Resource, ns, name, err)
	}
	return nil
}

// WorkloadGroupSpec is what a VM group template needs for the scenarios.
type WorkloadGroupSpec struct {
	ServiceAccount string
	Network        string
	Labels         map[string]string // template labels
	Ports          map[string]int64
	// Probe is spec.probe (istio.networking.v1.ReadinessProbe as YAML fields); nil: none.
	Probe map[string]any
}

// CreateWorkloadGroup creates a WorkloadGroup whose template carries the service account, network
// and labels.
func (a *APIServer) CreateWorkloadGroup(ctx context.Context, ns, name string, s WorkloadGroupSpec) (*unstructured.Unstructured, error) {
	tmpl := map[string]any{}
	if s.ServiceAccount != "" {
		tmpl["serviceAccount"] = s.ServiceAccount
	}
	if s.Network != "" {
		tmpl["network"] = s.Network
	}
	if len(s.Labels) > 0 {
		tmpl["labels"] = toAnyMap(s.Labels)
	}
	if len(s.Ports) > 0 {
		ports := map[string]any{}
		for k, v := range s.Ports {
			ports[k] = v
		}
		tmpl["ports"] = ports
	}
	spec := map[string]any{"template": tmpl}
	if s.Probe != nil {
		spec["probe"] = s.Probe
	}
	if len(s.Labels) > 0 {
		spec["metadata"] = map[string]any{"labels": toAnyMap(s.Labels)}
	}
	return a.Create(ctx, WorkloadGroupGVR, Istio(WorkloadGroupGVR, ns, name, nil, spec))
}

// CreateWorkloadEntry, CreateServiceEntry and CreateGateway create those objects from a raw spec
// (the fields of istio.io/api, as in YAML).
func (a *APIServer) CreateWorkloadEntry(ctx context.Context, ns, name string, labels map[string]string, spec map[string]any) (*unstructured.Unstructured, error) {
	return a.Create(ctx, WorkloadEntryGVR, Istio(WorkloadEntryGVR, ns, name, labels, spec))
}

func (a *APIServer) CreateServiceEntry(ctx context.Context, ns, name string, spec map[string]any) (*unstructured.Unstructured, error) {
	return a.Create(ctx, ServiceEntryGVR, Istio(ServiceEntryGVR, ns, name, nil, spec))
}

func (a *APIServer) CreateGateway(ctx context.Context, ns, name string, spec map[string]any) (*unstructured.Unstructured, error) {
	return a.Create(ctx, GatewayGVR, Istio(GatewayGVR, ns, name, nil, spec))
}

// EastWestGateway is the AUTO_PASSTHROUGH Gateway of Istio's multi-network sample
// (samples/multicluster/expose-services.yaml) on the given port, selecting
// `istio: eastwestgateway`.
func EastWestGateway(port int64) map[string]any {
	return map[string]any{
		"selector": map[string]any{"istio": "eastwestgateway"},
		"servers": []any{map[string]any{
			"port":  map[string]any{"number": port, "name": "tls", "protocol": "TLS"},
			"tls":   map[string]any{"mode": "AUTO_PASSTHROUGH"},
			"hosts": []any{"*.local"},
		}},
	}
}

// GetWorkloadEntry reads one WorkloadEntry.
func (a *APIServer) GetWorkloadEntry(ctx context.Context, ns, name string) (*unstructured.Unstructured, error) {
	return a.Dynamic.Resource(WorkloadEntryGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
}

// ListWorkloadEntries lists the WorkloadEntries of a namespace.
func (a *APIServer) ListWorkloadEntries(ctx context.Context, ns string) ([]unstructured.Unstructured, error) {
	l, err := a.Dynamic.Resource(WorkloadEntryGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("harness: list workloadentries %s: %w", ns, err)
	}
	return l.Items, nil
}

// WaitWorkloadEntry polls until the WorkloadEntry exists and cond (if not nil) accepts it.
func (a *APIServer) WaitWorkloadEntry(ctx context.Context, ns, name string, cond func(*unstructured.Unstructured) error) (*unstructured.Unstructured, error) {
	var got *unstructured.Unstructured
	err := Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		we, err := a.GetWorkloadEntry(ctx, ns, name)
		if err != nil {
			return false, err
		}
		if cond != nil {
			if err := cond(we); err != nil {
				return false, err
			}
		}
		got = we
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("harness: workloadentry %s/%s: %w", ns, name, err)
	}
	return got, nil
}

// WaitWorkloadEntryGone polls until the WorkloadEntry does not exist.
func (a *APIServer) WaitWorkloadEntryGone(ctx context.Context, ns, name string) error {
	err := Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		_, err := a.GetWorkloadEntry(ctx, ns, name)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		return false, fmt.Errorf("still there")
	})
	if err != nil {
		return fmt.Errorf("harness: workloadentry %s/%s: %w", ns, name, err)
	}
	return nil
}

// ConfigMapData waits for a ConfigMap key to exist and returns its value.
func (a *APIServer) ConfigMapData(ctx context.Context, ns, name, key string) (string, error) {
	var val string
	err := Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		cm, err := a.Kube.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		v, ok := cm.Data[key]
		if !ok || v == "" {
			return false, fmt.Errorf("no key %q", key)
		}
		val = v
		return true, nil
	})
	if err != nil {
		return "", fmt.Errorf("harness: configmap %s/%s: %w", ns, name, err)
	}
	return val, nil
}

func toAnyMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
