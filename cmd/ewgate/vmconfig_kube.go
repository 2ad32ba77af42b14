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
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube"
)

var workloadGroupsGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadgroups"}

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
	cs, err := kubernetes.NewForConfig(rc)
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
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for service account %s/%s: %w", ns, sa, err)
	}
	b.Token = tr.Status.Token
	var meshRoot []byte
	if f.meshRoot != "" {
		meshRoot, err = os.ReadFile(f.meshRoot)
	} else {
		cm, gerr := cs.CoreV1().ConfigMaps(ns).Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if gerr != nil {
			return nil, fmt.Errorf("mesh root (ConfigMap %s/istio-ca-root-cert; or pass --mesh-root): %w", ns, gerr)
		}
		meshRoot = []byte(cm.Data["root-cert.pem"])
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
