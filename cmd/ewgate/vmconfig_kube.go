package main

// The cluster side of ewgate vm-config: the WorkloadGroup read from the API server, the token a
// TokenRequest for the group's service account (audience istio-ca), the mesh root from the
// istio-ca-root-cert ConfigMap istiod keeps in every namespace. The only client-go user of
// cmd/ewgate besides the store wiring.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube"
)

// Everything through the dynamic client: the typed clientset links
// k8s.io/client-go/kubernetes/scheme, whose start-up registration of every built-in API group
// keeps about 14 MiB of the binary resident in every gateway.
var (
	workloadGroupsGVR  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadgroups"}
	serviceAccountsGVR = schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}
	configMapsGVR      = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
)

// createToken asks for a token of service account ns/sa (the serviceaccounts/token subresource).
func createToken(ctx context.Context, dyn dynamic.Interface, ns, sa string, secs int64) (string, error) {
	req := &authnv1.TokenRequest{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenRequest"},
		Spec:     authnv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: &secs},
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(req)
	if err != nil {
		return "", err
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetName(sa) // the dynamic client puts the object's name in the path: serviceaccounts/<sa>/token
	u, err = dyn.Resource(serviceAccountsGVR).Namespace(ns).Create(ctx, u, metav1.CreateOptions{}, "token")
	if err != nil {
		return "", err
	}
	var tr authnv1.TokenRequest
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &tr); err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

func clusterBundle(f *vmFlags) (*bundle, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := kube.RESTConfig(f.kubeconfig)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	ns, name := f.namespaceName()
	u, err := dyn.Resource(workloadGroupsGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("WorkloadGroup %s/%s: %w", ns, name, err)
	}
	raw, err := json.Marshal(u.Object)
	if err != nil {
		return nil, err
	}
	b := &bundle{ClusterID: "Kubernetes"}
	if err := json.Unmarshal(raw, &b.Group); err != nil {
		return nil, fmt.Errorf("WorkloadGroup %s/%s: %w", ns, name, err)
	}
	sa := serviceAccountOf(&b.Group)
	secs := int64(f.duration / time.Second)
	b.Token, err = createToken(ctx, dyn, ns, sa, secs)
	if err != nil {
		return nil, fmt.Errorf("token for service account %s/%s: %w", ns, sa, err)
	}
	var meshRoot []byte
	if f.meshRoot != "" {
		meshRoot, err = os.ReadFile(f.meshRoot)
	} else {
		cm, gerr := dyn.Resource(configMapsGVR).Namespace(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if gerr != nil {
			return nil, fmt.Errorf("mesh root (ConfigMap %s/istio-ca-root-cert; or pass --mesh-root): %w", ns, gerr)
		}
		root, _, _ := unstructured.NestedString(cm.Object, "data", "root-cert.pem")
		meshRoot = []byte(root)
	}
	if err != nil {
		return nil, err
	}
	serving, err := os.ReadFile(f.servingCA)
	if err != nil {
		return nil, err
	}
	b.Root, err = rootBundle(serving, meshRoot)
	return b, err
}

// serviceAccountOf is the group's template service account; Istio's default is "default".
func serviceAccountOf(g *registrar.WorkloadGroup) string {
	if sa := g.Spec.Template.ServiceAccount; sa != "" {
		return sa
	}
	return "default"
}
