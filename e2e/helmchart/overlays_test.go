package helmchart

import (
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ewgate/ewgate/e2e/harness"
)

// TestChartMatchesOverlays: the kustomize overlays stay (docs/operations.md says why), and this
// keeps the two from drifting. For each overlay, the chart rendered with the same namespace,
// mode, network and services gives the same ewgate config (compared parsed) and the same
// container: ports, probes, preStop, resources, security contexts, mount paths.
func TestChartMatchesOverlays(t *testing.T) {
	for _, tc := range []struct{ overlay, ns string }{{"istiod", "istio-system"}, {"standalone", "ewgate-system"}} {
		t.Run(tc.overlay, func(t *testing.T) {
			ctx := harness.Context(t, 2*time.Minute)
			dir, err := filepath.Abs(filepath.Join("..", "..", "deploy", "kubernetes", "overlays", tc.overlay))
			if err != nil {
				t.Fatal(err)
			}
			out, err := cluster.API.Kubectl(ctx, "kustomize", dir)
			if err != nil {
				t.Fatalf("kubectl kustomize: %v\n%s", err, out)
			}
			kobjs := objects(t, out)
			var kcfg map[string]any
			kcm := find(kobjs, "ConfigMap")
			if len(kcm) != 1 {
				t.Fatalf("the overlay renders %d ConfigMaps", len(kcm))
			}
			if err := yaml.Unmarshal([]byte(kcm[0]["data"].(map[string]any)["ewgate.yaml"].(string)), &kcfg); err != nil {
				t.Fatal(err)
			}

			// The chart's values for the same installation, read from the overlay's config.
			node := kcfg["xds"].(map[string]any)["node"].(map[string]any)
			values := map[string]any{"mode": tc.overlay, "network": node["network"]}
			if tc.overlay == "standalone" {
				values["standalone"] = map[string]any{"services": kcfg["services"]}
				values["clusterID"] = kcfg["control"].(map[string]any)["upstreams"].([]any)[0].(map[string]any)["cluster"]
			} else {
				values["clusterID"] = node["cluster_id"]
			}
			b, err := yaml.Marshal(values)
			if err != nil {
				t.Fatal(err)
			}
			vf := filepath.Join(t.TempDir(), "values.yaml")
			if err := os.WriteFile(vf, b, 0o600); err != nil {
				t.Fatal(err)
			}
			hout, err := helm(t, ctx, "template", "ewgate", chartDir(t), "-n", tc.ns, "-f", vf)
			if err != nil {
				t.Fatal(err)
			}
			hobjs := objects(t, hout)
			var hcfg map[string]any
			if err := yaml.Unmarshal([]byte(one(t, hobjs, "ConfigMap")["data"].(map[string]any)["ewgate.yaml"].(string)), &hcfg); err != nil {
				t.Fatal(err)
			}
			if asJSON(t, hcfg) != asJSON(t, kcfg) {
				t.Errorf("ewgate config\nchart:   %s\noverlay: %s", asJSON(t, hcfg), asJSON(t, kcfg))
			}

			kc, hc := podParts(t, one(t, kobjs, "Deployment")), podParts(t, one(t, hobjs, "Deployment"))
			for k := range kc {
				if asJSON(t, hc[k]) != asJSON(t, kc[k]) {
					t.Errorf("Deployment %s\nchart:   %s\noverlay: %s", k, asJSON(t, hc[k]), asJSON(t, kc[k]))
				}
			}
		})
	}
}

// podParts are the parts of a Deployment's pod both renderings must agree on.
func podParts(t *testing.T, dep map[string]any) map[string]any {
	t.Helper()
	spec := dep["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	ctr := spec["containers"].([]any)[0].(map[string]any)
	var mounts []string
	for _, m := range ctr["volumeMounts"].([]any) {
		mounts = append(mounts, m.(map[string]any)["mountPath"].(string))
	}
	sort.Strings(mounts) // a kustomize patch appends its mounts; the order means nothing
	return map[string]any{
		"ports":                         ctr["ports"],
		"args":                          ctr["args"],
		"readinessProbe":                ctr["readinessProbe"],
		"livenessProbe":                 ctr["livenessProbe"],
		"lifecycle":                     ctr["lifecycle"],
		"resources":                     ctr["resources"],
		"securityContext":               ctr["securityContext"],
		"pod securityContext":           spec["securityContext"],
		"terminationGracePeriodSeconds": spec["terminationGracePeriodSeconds"],
		"mount paths":                   mounts,
	}
}
