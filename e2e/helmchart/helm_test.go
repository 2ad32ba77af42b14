package helmchart

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/ewgate/ewgate/e2e/harness"
)

// chartDir is deploy/helm/ewgate of the repository (the parent of this module).
func chartDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "deploy", "helm", "ewgate"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// examples are the values files under the chart's examples/, by name without .yaml.
func examples(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir(t), "examples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no values examples under %s/examples (%v)", chartDir(t), err)
	}
	out := map[string]string{}
	for _, f := range files {
		out[strings.TrimSuffix(filepath.Base(f), ".yaml")] = f
	}
	return out
}

// helm runs the pinned helm with the cluster's kubeconfig and its own home directories (nothing
// of the machine's helm configuration is read or written).
func helm(t *testing.T, ctx context.Context, args ...string) ([]byte, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.CommandContext(ctx, cluster.Peers.Helm(), args...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"KUBECONFIG=" + cluster.API.Kubeconfig,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// objects splits a rendered manifest into its objects.
func objects(t *testing.T, manifest []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(manifest), -1) {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("rendered manifest: %v\n%s", err, doc)
		}
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

func find(objs []map[string]any, kind string) []map[string]any {
	var out []map[string]any
	for _, o := range objs {
		if o["kind"] == kind {
			out = append(out, o)
		}
	}
	return out
}

func TestHelmLint(t *testing.T) {
	ctx := harness.Context(t, 2*time.Minute)
	if out, err := helm(t, ctx, "lint", "--strict", chartDir(t)); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for name, f := range examples(t) {
		out, err := helm(t, ctx, "lint", "--strict", chartDir(t), "-f", f)
		if err != nil {
			t.Errorf("example %s: %v\n%s", name, err, out)
		}
	}
}

// TestHelmExamplesInDocs: every values example is shown, byte for byte, in docs/operations.md.
func TestHelmExamplesInDocs(t *testing.T) {
	for name, f := range examples(t) {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got := harness.DocBlock(t, "operations.md", "helm-"+name, nil)
		if strings.TrimSpace(got) != strings.TrimSpace(string(want)) {
			t.Errorf("docs/operations.md block e2e:helm-%s differs from %s:\n%s", name, f, got)
		}
	}
}

// TestHelmTemplateExamples renders every example and checks what the chart promises: the one
// network value in the config and on the Service, the config accepted by `ewgate check`, every
// file the config names mounted, and the drain arithmetic.
func TestHelmTemplateExamples(t *testing.T) {
	for name, f := range examples(t) {
		t.Run(name, func(t *testing.T) {
			ctx := harness.Context(t, 2*time.Minute)
			out, err := helm(t, ctx, "template", "ewgate", chartDir(t), "-n", "istio-system", "-f", f)
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, out)
			var values struct {
				Network     string         `json:"network"`
				Mode        string         `json:"mode"`
				ExtraConfig map[string]any `json:"extraConfig"`
			}
			b, _ := os.ReadFile(f)
			if err := yaml.Unmarshal(b, &values); err != nil {
				t.Fatal(err)
			}
			cfg := checkRendered(t, objs, values.Network)
			checkConfig(t, cfg, one(t, objs, "Deployment"))
			var rendered map[string]any
			if err := yaml.Unmarshal([]byte(cfg), &rendered); err != nil {
				t.Fatal(err)
			}
			checkMerged(t, "", values.ExtraConfig, rendered)
			if values.Mode != "standalone" && len(find(objs, "Gateway")) != 1 {
				t.Errorf("istiod mode without the Istio Gateway")
			}
		})
	}
}

// checkMerged checks that every leaf of extraConfig is in the rendered config at the same path.
func checkMerged(t *testing.T, path string, extra, cfg map[string]any) {
	t.Helper()
	for k, v := range extra {
		sub, isMap := v.(map[string]any)
		got, _ := cfg[k].(map[string]any)
		switch {
		case isMap && got == nil:
			t.Errorf("extraConfig%s.%s: not a map in the rendered config: %v", path, k, cfg[k])
		case isMap:
			checkMerged(t, path+"."+k, sub, got)
		case asJSON(t, v) != asJSON(t, cfg[k]):
			t.Errorf("extraConfig%s.%s = %v, rendered %v", path, k, v, cfg[k])
		}
	}
}

func one(t *testing.T, objs []map[string]any, kind string) map[string]any {
	t.Helper()
	l := find(objs, kind)
	if len(l) != 1 {
		t.Fatalf("%d objects of kind %s rendered, want 1", len(l), kind)
	}
	return l[0]
}

// checkRendered returns the ConfigMap's config after checking that its xds.node.network and the
// Service's topology.istio.io/network label are both the example's network.
func checkRendered(t *testing.T, objs []map[string]any, network string) string {
	t.Helper()
	cm := one(t, objs, "ConfigMap")
	cfg, _ := cm["data"].(map[string]any)["ewgate.yaml"].(string)
	var c struct {
		XDS struct {
			Node struct {
				Network string `json:"network"`
			} `json:"node"`
		} `json:"xds"`
	}
	if err := yaml.Unmarshal([]byte(cfg), &c); err != nil {
		t.Fatalf("the ConfigMap's ewgate.yaml: %v", err)
	}
	var svcNet string
	for _, svc := range find(objs, "Service") {
		md := svc["metadata"].(map[string]any)
		if labels, _ := md["labels"].(map[string]any); labels["topology.istio.io/network"] != nil {
			svcNet, _ = labels["topology.istio.io/network"].(string)
			for _, p := range svc["spec"].(map[string]any)["ports"].([]any) {
				if n := p.(map[string]any)["port"].(float64); n == 15020 || n == 15000 {
					t.Errorf("the network Service publishes %v (metrics or debug admin)", n)
				}
			}
		}
	}
	if network == "" || c.XDS.Node.Network != network || svcNet != network {
		t.Errorf("network value %q, config xds.node.network %q, Service label topology.istio.io/network %q: want all three the same",
			network, c.XDS.Node.Network, svcNet)
	}
	return cfg
}

// checkConfig runs the real `ewgate check` on a rendered config with the files it names where
// the Deployment mounts them (harness.CheckDeployedConfig).
func checkConfig(t *testing.T, cfg string, dep map[string]any) {
	t.Helper()
	spec := dep["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	ctr := spec["containers"].([]any)[0].(map[string]any)
	mounts := []string{"/var/run/secrets/kubernetes.io/serviceaccount"} // the automounted token
	for _, m := range ctr["volumeMounts"].([]any) {
		mounts = append(mounts, m.(map[string]any)["mountPath"].(string))
	}
	harness.CheckDeployedConfig(t, cfg, mounts)
}

var (
	crdsOnce sync.Once
	crdsErr  error
)

// chartCRDs applies, once per test binary, the CRDs of the optional kinds the chart renders
// (cert-manager's Certificate, the Prometheus Operator's PodMonitor and ServiceMonitor; pinned in
// the peers' cache), so that every example installs and each of those objects meets its schema.
func chartCRDs(t *testing.T) {
	t.Helper()
	crdsOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, crdsErr = cluster.API.ApplyCRDs(ctx, cluster.Peers.ChartCRDs())
	})
	if crdsErr != nil {
		t.Fatal(crdsErr)
	}
}

// customKinds are the kinds defined by CRDs (the apiserver prunes unknown fields of these instead
// of refusing them, so each is read back and compared with what was rendered).
var customKinds = []string{"Gateway", "Certificate", "PodMonitor", "ServiceMonitor"}

// TestHelmInstallUninstall installs every example into a fresh namespace of the real apiserver,
// lists every object of the release's manifest through the API (there are no kubelets: the
// objects, not pods), reads back every custom resource (the Istio Gateway, the Certificate, the
// monitors) and finds it as rendered (its CRD's schema kept every field), then uninstalls and
// sees every object gone.
func TestHelmInstallUninstall(t *testing.T) {
	chartCRDs(t)
	for name, file := range examples(t) {
		t.Run(name, func(t *testing.T) {
			ctx := harness.Context(t, 3*time.Minute)
			ns := cluster.Namespace(t, "helm-"+name)
			release := "ewgate-" + name
			if out, err := helm(t, ctx, "install", release, chartDir(t), "-n", ns, "-f", file); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			manifest, err := helm(t, ctx, "get", "manifest", release, "-n", ns)
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, manifest)
			want := names(objs)
			got, err := listRelease(ctx, objs, release)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("objects listed through the API with app.kubernetes.io/instance=%s:\n%v\nwant (the release's manifest):\n%v", release, got, want)
			}
			t.Logf("%s: %d objects created: %v", name, len(got), got)
			for _, o := range objs {
				if slices.Contains(customKinds, o["kind"].(string)) {
					checkStoredAsRendered(t, ctx, o)
				}
			}

			checkUpgradeReloads(t, ctx, ns, release, objs)

			if out, err := helm(t, ctx, "uninstall", release, "-n", ns, "--wait"); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			var left []string
			err = harness.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
				left, err = listRelease(ctx, objs, release)
				return len(left) == 0, err
			})
			if err != nil {
				t.Fatalf("after helm uninstall, still there: %v (%v)", left, err)
			}
		})
	}
}

// checkUpgradeReloads: `helm upgrade` with another config value changes the ConfigMap and leaves
// the Deployment's pod template alone (its generation does not move), so the pods reload the file
// instead of being replaced, as docs/operations.md promises.
func checkUpgradeReloads(t *testing.T, ctx context.Context, ns, release string, objs []map[string]any) {
	t.Helper()
	dep := unstructured.Unstructured{Object: one(t, objs, "Deployment")}
	cm := unstructured.Unstructured{Object: one(t, objs, "ConfigMap")}
	deps := cluster.API.Kube.AppsV1().Deployments(ns)
	before, err := deps.Get(ctx, dep.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := helm(t, ctx, "upgrade", release, chartDir(t), "-n", ns, "--reuse-values", "--set", "mesh.maxConnections=12345"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	after, err := deps.Get(ctx, dep.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cluster.API.Kube.CoreV1().ConfigMaps(ns).Get(ctx, cm.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Generation != before.Generation {
		t.Errorf("helm upgrade of a config value moved the Deployment from generation %d to %d: the pods would roll", before.Generation, after.Generation)
	}
	// A verbatim config (the value config) is not rendered from mesh.maxConnections.
	rendered := strings.Contains(cm.Object["data"].(map[string]any)["ewgate.yaml"].(string), "Rendered by the ewgate chart")
	if changed := strings.Contains(got.Data["ewgate.yaml"], "max_connections: 12345"); changed != rendered {
		t.Errorf("after helm upgrade --set mesh.maxConnections=12345 (config rendered from values: %v) the ConfigMap holds:\n%s", rendered, got.Data["ewgate.yaml"])
	}
}

// names are "Kind namespace/name" of the objects, sorted.
func names(objs []map[string]any) []string {
	var out []string
	for _, o := range objs {
		md := o["metadata"].(map[string]any)
		ns, _ := md["namespace"].(string)
		out = append(out, fmt.Sprintf("%s %s/%s", o["kind"], ns, md["name"]))
	}
	sort.Strings(out)
	return out
}

// listRelease lists, through the API, every kind the manifest holds, selected by the release's
// instance label, and returns them as names does.
func listRelease(ctx context.Context, objs []map[string]any, release string) ([]string, error) {
	groups, err := restmapper.GetAPIGroupResources(cluster.API.Kube.Discovery())
	if err != nil {
		return nil, err
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	seen := map[schema.GroupVersionKind]bool{}
	var out []string
	for _, o := range objs {
		gvk := schema.FromAPIVersionAndKind(o["apiVersion"].(string), o["kind"].(string))
		if seen[gvk] {
			continue
		}
		seen[gvk] = true
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", gvk, err)
		}
		list, err := cluster.API.Dynamic.Resource(m.Resource).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", m.Resource, err)
		}
		for _, item := range list.Items {
			out = append(out, fmt.Sprintf("%s %s/%s", item.GetKind(), item.GetNamespace(), item.GetName()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// checkStoredAsRendered reads a custom resource back: its spec must be what was rendered, so its
// CRD's schema accepted (and pruned nothing of) every field.
func checkStoredAsRendered(t *testing.T, ctx context.Context, rendered map[string]any) {
	t.Helper()
	u := unstructured.Unstructured{Object: rendered}
	mapping, err := mapper(t).RESTMapping(u.GroupVersionKind().GroupKind(), u.GroupVersionKind().Version)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := cluster.API.Dynamic.Resource(mapping.Resource).Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if asJSON(t, stored.Object["spec"]) != asJSON(t, rendered["spec"]) {
		t.Errorf("%s %s: spec stored:\n%s\nrendered:\n%s", u.GetKind(), u.GetName(), asJSON(t, stored.Object["spec"]), asJSON(t, rendered["spec"]))
	}
	if u.GetKind() != "Gateway" {
		return
	}
	servers, _ := stored.Object["spec"].(map[string]any)["servers"].([]any)
	if len(servers) == 0 || servers[0].(map[string]any)["tls"].(map[string]any)["mode"] != "AUTO_PASSTHROUGH" {
		t.Errorf("Gateway servers %v: want AUTO_PASSTHROUGH first", servers)
	}
}

func mapper(t *testing.T) meta.RESTMapper {
	t.Helper()
	groups, err := restmapper.GetAPIGroupResources(cluster.API.Kube.Discovery())
	if err != nil {
		t.Fatal(err)
	}
	return restmapper.NewDiscoveryRESTMapper(groups)
}

// asJSON compares decoded objects whatever their number types (YAML's float64, the dynamic
// client's int64): encoding/json writes both the same and sorts map keys.
func asJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
