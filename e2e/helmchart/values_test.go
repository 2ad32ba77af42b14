package helmchart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// TestHelmRefusesValues: values that cannot work fail the render with a message naming the value
// (values.schema.json for names and types, the templates for what depends on several values).
func TestHelmRefusesValues(t *testing.T) {
	for _, tc := range []struct {
		name, values, want string
	}{
		{"mode", "mode: envoy\n", "at '/mode': value must be one of 'istiod', 'standalone'"},
		{"misspelt value", "netwrok: network2\n", "additional properties 'netwrok' not allowed"},
		{"misspelt nested value", "control:\n  cert: {secret: x}\n", "at '/control/cert': additional properties 'secret' not allowed"},
		{"network", "network: \"\"\n", "at '/network'"},
		{"grace in minutes", "drainTimeout: 2m\nterminationGracePeriodSeconds: 120\n", "terminationGracePeriodSeconds 120 is not longer than preStopSeconds 5 + drainTimeout 2m"},
		{"drain unit", "drainTimeout: 1h\n", `drainTimeout "1h": want whole seconds or minutes`},
		{"grace", "drainTimeout: 60s\n", "terminationGracePeriodSeconds 45 is not longer than preStopSeconds 5 + drainTimeout 60s"},
		{"metrics published", "service:\n  ports: [{name: metrics, port: 15020}]\n", "publishes port 15020"},
		{"config and extraConfig", "config: \"log: {}\"\nextraConfig: {log: {level: debug}}\n", "config and extraConfig are both set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := harness.Context(t, time.Minute)
			vf := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(vf, []byte(tc.values), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := helm(t, ctx, "template", "ewgate", chartDir(t), "-f", vf)
			if err == nil {
				t.Fatalf("rendered with %q:\n%s", tc.values, out)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v; want it to say %q", err, tc.want)
			}
		})
	}
}

// TestHelmServiceAndScheduling renders the cloud load-balancer and standalone examples and checks
// that the Service and scheduling values arrive where Kubernetes reads them.
func TestHelmServiceAndScheduling(t *testing.T) {
	ctx := harness.Context(t, time.Minute)
	ex := examples(t)
	out, err := helm(t, ctx, "template", "ewgate", chartDir(t), "-n", "istio-system", "-f", ex["istiod-cloud-lb"])
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, out)
	var svc map[string]any
	for _, s := range find(objs, "Service") {
		if s["metadata"].(map[string]any)["name"] == "ewgate" {
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("no Service ewgate")
	}
	spec := svc["spec"].(map[string]any)
	ann := svc["metadata"].(map[string]any)["annotations"].(map[string]any)
	if ann["service.beta.kubernetes.io/aws-load-balancer-type"] != "external" ||
		asJSON(t, spec["loadBalancerSourceRanges"]) != `["203.0.113.0/24","198.51.100.0/24"]` ||
		spec["externalTrafficPolicy"] != "Local" || spec["type"] != "LoadBalancer" {
		t.Errorf("Service: annotations %v, spec %v", ann, spec)
	}
	var ports []string
	for _, p := range spec["ports"].([]any) {
		ports = append(ports, asJSON(t, p.(map[string]any)["port"]))
	}
	if strings.Join(ports, ",") != "15021,15443,15012" {
		t.Errorf("Service ports %v, want 15021,15443,15012", ports)
	}
	gw := one(t, objs, "Gateway")
	if s := asJSON(t, gw["spec"]); !strings.Contains(s, `"mode":"AUTO_PASSTHROUGH"`) || !strings.Contains(s, `"number":15012`) {
		t.Errorf("Gateway spec %s: want AUTO_PASSTHROUGH on 15443 and the 15012 server", s)
	}
	cert := one(t, objs, "Certificate")
	if s := asJSON(t, cert["spec"]); !strings.Contains(s, `"dnsNames":["istiod.istio-system.svc"]`) || !strings.Contains(s, `"secretName":"ewgate-control-tls"`) {
		t.Errorf("Certificate spec %s: want istiod.istio-system.svc into ewgate-control-tls", s)
	}
	hpa := one(t, objs, "HorizontalPodAutoscaler")
	if s := asJSON(t, hpa["spec"]); !strings.Contains(s, `"name":"memory"`) || !strings.Contains(s, `"minReplicas":3`) {
		t.Errorf("HPA spec %s: want 3 replicas at least and a memory target", s)
	}

	out, err = helm(t, ctx, "template", "ewgate", chartDir(t), "-n", "ewgate-system", "-f", ex["standalone"])
	if err != nil {
		t.Fatal(err)
	}
	objs = objects(t, out)
	if len(find(objs, "HorizontalPodAutoscaler")) != 0 || len(find(objs, "Gateway")) != 0 {
		t.Error("standalone with autoscaling off: an HPA or an Istio Gateway rendered")
	}
	dep := one(t, objs, "Deployment")
	pod := dep["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	if asJSON(t, dep["spec"].(map[string]any)["replicas"]) != "3" {
		t.Errorf("replicas %v, want 3", dep["spec"].(map[string]any)["replicas"])
	}
	tsc := asJSON(t, pod["topologySpreadConstraints"])
	if !strings.Contains(tsc, `"labelSelector":{"matchLabels":{"app":"ewgate","app.kubernetes.io/instance":"ewgate"}}`) {
		t.Errorf("topologySpreadConstraints %s: the entry without a labelSelector did not get the pods' labels", tsc)
	}
	if pod["nodeSelector"] == nil || pod["tolerations"] == nil {
		t.Errorf("nodeSelector %v, tolerations %v: want the example's", pod["nodeSelector"], pod["tolerations"])
	}
	pdb := asJSON(t, one(t, objs, "PodDisruptionBudget")["spec"])
	if !strings.Contains(pdb, `"minAvailable":2`) || strings.Contains(pdb, "maxUnavailable") {
		t.Errorf("PDB spec %s: want minAvailable 2 alone (the apiserver refuses both)", pdb)
	}
}
