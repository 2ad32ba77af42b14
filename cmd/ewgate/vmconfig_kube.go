package main

// The cluster side of ewgate vm-config: the WorkloadGroup read from the API server, the token a
// TokenRequest for the group's service account (audience istio-ca), the mesh root from the
// istio-ca-root-cert ConfigMap istiod keeps in every namespace, all through the store's small
// API client (registrar/kube/kapi).

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// createToken asks for a token of service account ns/sa (the serviceaccounts/token subresource,
// a TokenRequest for audience istio-ca).
func createToken(ctx context.Context, c *kapi.Client, ns, sa string, secs int64) (string, error) {
	req := map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
		"spec": map[string]any{"audiences": []string{"istio-ca"}, "expirationSeconds": secs},
	}
	var tr struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	if err := c.Resource("", "v1", "serviceaccounts").CreateSub(ctx, ns, sa, "token", req, &tr); err != nil {
		return "", err
	}
	if tr.Status.Token == "" {
		return "", fmt.Errorf("the API server answered the TokenRequest without a token")
	}
	return tr.Status.Token, nil
}

func clusterBundle(f *vmFlags) (*bundle, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := kube.ClientConfig(f.kubeconfig)
	if err != nil {
		return nil, err
	}
	c, err := kapi.New(rc)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ns, name := f.namespaceName()
	u, err := c.Resource("networking.istio.io", "v1", "workloadgroups").Get(ctx, ns, name)
	if err != nil {
		return nil, fmt.Errorf("WorkloadGroup %s/%s: %w", ns, name, err)
	}
	raw, err := json.Marshal(u)
	if err != nil {
		return nil, err
	}
	b := &bundle{ClusterID: "Kubernetes"}
	if err := json.Unmarshal(raw, &b.Group); err != nil {
		return nil, fmt.Errorf("WorkloadGroup %s/%s: %w", ns, name, err)
	}
	sa := serviceAccountOf(&b.Group)
	secs := int64(f.duration / time.Second)
	b.Token, err = createToken(ctx, c, ns, sa, secs)
	if err != nil {
		return nil, fmt.Errorf("token for service account %s/%s: %w", ns, sa, err)
	}
	var meshRoot []byte
	if f.meshRoot != "" {
		meshRoot, err = os.ReadFile(f.meshRoot)
	} else {
		cm, gerr := c.Resource("", "v1", "configmaps").Get(ctx, ns, "istio-ca-root-cert")
		if gerr != nil {
			return nil, fmt.Errorf("mesh root (ConfigMap %s/istio-ca-root-cert; or pass --mesh-root): %w", ns, gerr)
		}
		data, _ := cm["data"].(map[string]any)
		root, _ := data["root-cert.pem"].(string)
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
