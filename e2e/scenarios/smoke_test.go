package scenarios

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
	"github.com/ewgate/ewgate/e2e/peers"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The apiserver is ready and reports the pinned version (the -ldflags stamp worked).
func TestAPIServerReadyWithPinnedVersion(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 30*time.Second)
	body, code, err := cluster.API.Get(ctx, "/readyz", true)
	if err != nil || code != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("/readyz: %d %q %v", code, body, err)
	}
	v, err := cluster.API.Kube.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != peers.KubeVersion || v.Major != "1" || v.Minor != "32" {
		t.Fatalf("version %q (major %q minor %q), want %s", v.GitVersion, v.Major, v.Minor, peers.KubeVersion)
	}
	// Anonymous auth is on (OIDC discovery needs it) but RBAC still refuses anonymous API reads.
	if _, code, err := cluster.API.Get(ctx, "/api/v1/namespaces", false); err != nil || code != http.StatusForbidden {
		t.Fatalf("anonymous list namespaces: %d %v, want 403", code, err)
	}
}

func TestIstioCRDsEstablished(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 30*time.Second)
	for _, name := range []string{
		"workloadentries.networking.istio.io", "workloadgroups.networking.istio.io",
		"serviceentries.networking.istio.io", "gateways.networking.istio.io",
		"destinationrules.networking.istio.io", "virtualservices.networking.istio.io",
	} {
		if !slices.Contains(cluster.CRDs, name) {
			t.Errorf("CRD %s not applied (have %d)", name, len(cluster.CRDs))
			continue
		}
		crd, err := cluster.API.APIExt.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		established := false
		for _, c := range crd.Status.Conditions {
			established = established || (c.Type == apiextv1.Established && c.Status == apiextv1.ConditionTrue)
		}
		if !established {
			t.Errorf("CRD %s not Established: %+v", name, crd.Status.Conditions)
		}
		storage := ""
		for _, v := range crd.Spec.Versions {
			if v.Storage {
				storage = v.Name
			}
		}
		if storage != "v1" {
			t.Errorf("CRD %s storage version %q, want v1", name, storage)
		}
	}
}

// A WorkloadGroup and a WorkloadEntry made with the dynamic client read back through the real
// kubectl and the kubeconfig the harness wrote.
func TestWorkloadEntryReadBackWithKubectl(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 60*time.Second)
	ns := cluster.Namespace(t, "smoke")
	if _, err := cluster.API.CreateServiceAccount(ctx, ns, "vm"); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateWorkloadGroup(ctx, ns, "web", harness.WorkloadGroupSpec{
		ServiceAccount: "vm", Network: "vmnet", Labels: map[string]string{"app": "web"},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateWorkloadEntry(ctx, ns, "web-127.0.9.1", map[string]string{"app": "web"},
		map[string]any{"address": "127.0.9.1", "serviceAccount": "vm", "network": "vmnet",
			"ports": map[string]any{"http": int64(8080)}}); err != nil {
		t.Fatal(err)
	}
	out, err := cluster.API.Kubectl(ctx, "-n", ns, "get", "workloadentries", "-o", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Items []struct {
			Metadata struct{ Name string }
			Spec     struct {
				Address, ServiceAccount, Network string
				Ports                            map[string]int
			}
		}
	}
	if err := yaml.Unmarshal(out, &list); err != nil {
		t.Fatalf("kubectl output: %v\n%s", err, out)
	}
	if len(list.Items) != 1 {
		t.Fatalf("kubectl listed %d entries, want 1:\n%s", len(list.Items), out)
	}
	it := list.Items[0]
	if it.Metadata.Name != "web-127.0.9.1" || it.Spec.Address != "127.0.9.1" || it.Spec.ServiceAccount != "vm" ||
		it.Spec.Network != "vmnet" || it.Spec.Ports["http"] != 8080 {
		t.Fatalf("kubectl read back %+v", it)
	}
	out, err = cluster.API.Kubectl(ctx, "-n", ns, "get", "workloadgroups", "web", "-o", "jsonpath={.spec.template.serviceAccount}")
	if err != nil || strings.TrimSpace(string(out)) != "vm" {
		t.Fatalf("kubectl get workloadgroup: %q %v", out, err)
	}
}

// A TokenRequest token carries the claims a Kubernetes service-account token has (docs/vm-identity.md). The token itself is never logged.
func TestTokenClaims(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 30*time.Second)
	ns := cluster.Namespace(t, "token")
	sa, err := cluster.API.CreateServiceAccount(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct{ Alg, Kid string }
	if err := json.Unmarshal(hdr, &h); err != nil || h.Alg != "RS256" || h.Kid == "" {
		t.Fatalf("header alg %q kid %q: %v", h.Alg, h.Kid, err)
	}
	c, err := harness.JWTClaims(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c["iss"] != cluster.API.Issuer {
		t.Errorf("iss %v, want %s", c["iss"], cluster.API.Issuer)
	}
	if aud, _ := c["aud"].([]any); len(aud) != 1 || aud[0] != "istio-ca" {
		t.Errorf("aud %v, want [istio-ca]", c["aud"])
	}
	if want := "system:serviceaccount:" + ns + ":vm"; c["sub"] != want {
		t.Errorf("sub %v, want %s", c["sub"], want)
	}
	k8s, _ := c["kubernetes.io"].(map[string]any)
	if k8s["namespace"] != ns {
		t.Errorf("kubernetes.io.namespace %v, want %s", k8s["namespace"], ns)
	}
	if sac, _ := k8s["serviceaccount"].(map[string]any); sac["name"] != "vm" || sac["uid"] != string(sa.UID) {
		t.Errorf("kubernetes.io.serviceaccount %v, want vm/%s", sac, sa.UID)
	}
	exp, _ := c["exp"].(json.Number).Int64()
	iat, _ := c["iat"].(json.Number).Int64()
	if d := exp - iat; d != 3600 {
		t.Errorf("exp-iat %d, want 3600", d)
	}
	for _, k := range []string{"nbf", "jti"} {
		if _, ok := c[k]; !ok {
			t.Errorf("no %s claim", k)
		}
	}
}

// Anonymous OIDC discovery answers over TLS verified with the apiserver's CA.
func TestOIDCDiscoveryAnonymous(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 30*time.Second)
	body, code, err := cluster.API.Get(ctx, "/.well-known/openid-configuration", false)
	if err != nil || code != http.StatusOK {
		t.Fatalf("openid-configuration: %d %v %s", code, err, body)
	}
	var disc struct {
		Issuer  string   `json:"issuer"`
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := json.Unmarshal(body, &disc); err != nil {
		t.Fatal(err)
	}
	if disc.Issuer != cluster.API.Issuer || disc.JWKSURI != cluster.API.Issuer+"/openid/v1/jwks" || !slices.Contains(disc.Algs, "RS256") {
		t.Fatalf("discovery %+v", disc)
	}
	body, code, err = cluster.API.Get(ctx, "/openid/v1/jwks", false)
	if err != nil || code != http.StatusOK {
		t.Fatalf("jwks: %d %v %s", code, err, body)
	}
	var jwks struct {
		Keys []struct{ Kty, Alg, Kid, Use string }
	}
	if err := json.Unmarshal(body, &jwks); err != nil {
		t.Fatal(err)
	}
	if len(jwks.Keys) != 1 || jwks.Keys[0].Kty != "RSA" || jwks.Keys[0].Alg != "RS256" || jwks.Keys[0].Kid == "" {
		t.Fatalf("jwks %+v", jwks)
	}
}

// The Gateway and ServiceEntry helpers make objects the apiserver accepts under the real CRD
// schemas, as kubectl shows.
func TestGatewayAndServiceEntryHelpers(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 60*time.Second)
	ns := cluster.Namespace(t, "objects")
	if _, err := cluster.API.CreateGateway(ctx, ns, "eastwest", harness.EastWestGateway(15443)); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateServiceEntry(ctx, ns, "reviews", map[string]any{
		"hosts":      []any{"reviews." + ns + ".svc.cluster.local"},
		"location":   "MESH_INTERNAL",
		"resolution": "STATIC",
		"ports":      []any{map[string]any{"number": int64(9080), "name": "http", "protocol": "HTTP"}},
		"workloadSelector": map[string]any{
			"labels": map[string]any{"app": "reviews"},
		},
	}); err != nil {
		t.Fatal(err)
	}
	out, err := cluster.API.Kubectl(ctx, "-n", ns, "get", "gateways,serviceentries", "-o",
		`jsonpath={range .items[*]}{.kind}/{.metadata.name}:{.spec.servers[0].tls.mode}{.spec.location}{"\n"}{end}`)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out))
	want := []string{"Gateway/eastwest:AUTO_PASSTHROUGH", "ServiceEntry/reviews:MESH_INTERNAL"}
	if !slices.Equal(got, want) {
		t.Fatalf("kubectl: %q, want %q", got, want)
	}
	// A spec the CRD schema refuses is refused (the schemas are real, not permissive).
	if _, err := cluster.API.CreateServiceEntry(ctx, ns, "bad", map[string]any{
		"hosts": []any{"bad.example"}, "location": "NOT_A_LOCATION",
	}); err == nil {
		t.Fatal("a ServiceEntry with location NOT_A_LOCATION was accepted")
	}
}
