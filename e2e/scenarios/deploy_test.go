package scenarios

// Scenario 8: the Kubernetes manifests under deploy/kubernetes. Each overlay is rendered by the
// real kubectl (kustomize), every object is accepted by the real apiserver with
// `kubectl apply --dry-run=server`, the config its ConfigMap embeds passes `ewgate check` (with
// the files it names standing where the Deployment mounts them), and the properties the
// operations page promises (drain, hardening, topology label) hold in what is rendered.

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ewgate/ewgate/e2e/harness"
)

// overlaysDir is deploy/kubernetes/overlays of the repository (the parent of this module).
func overlaysDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "deploy", "kubernetes", "overlays"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestDeployManifests(t *testing.T) {
	dir := overlaysDir(t)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var overlays []string
	for _, e := range entries {
		if e.IsDir() {
			overlays = append(overlays, e.Name())
		}
	}
	sort.Strings(overlays)
	if strings.Join(overlays, ",") != "istiod,standalone" {
		t.Fatalf("overlays %v, want istiod and standalone (update this test when adding one)", overlays)
	}
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) { checkOverlay(t, filepath.Join(dir, o), o) })
	}
}

// rendered is one overlay's output of kubectl kustomize.
type rendered struct {
	yaml    []byte
	objects []map[string]any
}

func (r *rendered) find(kind, name string) map[string]any {
	for _, o := range r.objects {
		if o["kind"] == kind && str(o, "metadata", "name") == name {
			return o
		}
	}
	return nil
}

func checkOverlay(t *testing.T, dir, overlay string) {
	ctx := harness.Context(t, 2*time.Minute)
	api := cluster.API
	out, err := api.Kubectl(ctx, "kustomize", dir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", overlay, err, out)
	}
	r := &rendered{yaml: out}
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("rendered %s: %v", overlay, err)
		}
		if m != nil {
			r.objects = append(r.objects, m)
		}
	}

	// Namespaces first (the apiserver refuses a dry-run into a namespace that does not exist),
	// then every object, with the server's validation and admission.
	namespaces := map[string]bool{}
	for _, o := range r.objects {
		if ns := str(o, "metadata", "namespace"); ns != "" {
			namespaces[ns] = true
		}
	}
	for ns := range namespaces {
		if err := api.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), overlay+".yaml")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	applied, err := api.Kubectl(ctx, "apply", "--dry-run=server", "-f", file)
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server (%s): %v\n%s", overlay, err, applied)
	}
	if n := strings.Count(string(applied), "(server dry run)"); n != len(r.objects) {
		t.Fatalf("dry-run reported %d objects, rendered %d:\n%s", n, len(r.objects), applied)
	}
	t.Logf("%s: %d objects accepted by the apiserver (dry run)", overlay, len(r.objects))

	dep := r.find("Deployment", "ewgate")
	if dep == nil {
		t.Fatal("no Deployment ewgate")
	}
	config := r.find("ConfigMap", "ewgate-config")
	if config == nil {
		t.Fatal("no ConfigMap ewgate-config")
	}
	cfg := str(config, "data", "ewgate.yaml")
	checkConfig(t, cfg, dep)
	checkDeployment(t, dep, cfg)
	checkService(t, r, overlay)
	for _, kind := range []string{"ServiceAccount", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ClusterRole", "Role"} {
		found := false
		for _, o := range r.objects {
			found = found || o["kind"] == kind
		}
		if !found {
			t.Errorf("no %s rendered", kind)
		}
	}
	if overlay == "istiod" && !strings.Contains(string(out), "audience: istio-ca") {
		t.Error("istiod overlay: no projected token with audience istio-ca")
	}
}

// checkConfig runs `ewgate check` on the ConfigMap's config with the files it names where the
// Deployment mounts them (harness.CheckDeployedConfig).
func checkConfig(t *testing.T, cfg string, dep map[string]any) {
	mounts := []string{"/var/run/secrets/kubernetes.io/serviceaccount"} // the automounted token
	for _, m := range list(container(t, dep), "volumeMounts") {
		mounts = append(mounts, str(m, "mountPath"))
	}
	harness.CheckDeployedConfig(t, cfg, mounts)
}

func checkDeployment(t *testing.T, dep map[string]any, cfg string) {
	var c struct {
		DrainTimeout string `json:"drain_timeout"`
	}
	// The config is strict YAML for ewgate; here only one key is read.
	if err := yaml.Unmarshal([]byte(cfg), &c); err != nil {
		t.Fatal(err)
	}
	drain, err := time.ParseDuration(c.DrainTimeout)
	if err != nil {
		t.Fatalf("drain_timeout %q: %v", c.DrainTimeout, err)
	}
	spec := obj(dep, "spec", "template", "spec")
	grace := time.Duration(num(spec, "terminationGracePeriodSeconds")) * time.Second
	ctr := container(t, dep)
	preStop := time.Duration(num(ctr, "lifecycle", "preStop", "sleep", "seconds")) * time.Second
	if grace <= drain+preStop {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than preStop %v + drain_timeout %v", grace, preStop, drain)
	}
	if n := num(dep, "spec", "replicas"); n < 2 {
		t.Errorf("replicas %d, want 2 or more", n)
	}
	sc := obj(ctr, "securityContext")
	if sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false || fmt.Sprint(obj(sc, "capabilities")["drop"]) != "[ALL]" {
		t.Errorf("container securityContext %v: want a read-only root, no privilege escalation, all capabilities dropped", sc)
	}
	psc := obj(spec, "securityContext")
	if psc["runAsNonRoot"] != true || str(psc, "seccompProfile", "type") != "RuntimeDefault" {
		t.Errorf("pod securityContext %v: want runAsNonRoot and seccomp RuntimeDefault", psc)
	}
	if str(ctr, "readinessProbe", "httpGet", "path") != "/healthz/ready" || num(ctr, "readinessProbe", "httpGet", "port") != 15021 {
		t.Errorf("readiness probe %v: want GET /healthz/ready on 15021", obj(ctr, "readinessProbe"))
	}
	if obj(ctr, "resources", "limits") == nil || obj(ctr, "resources", "requests") == nil {
		t.Error("container without requests and limits")
	}
}

func checkService(t *testing.T, r *rendered, overlay string) {
	svc := r.find("Service", "ewgate")
	if svc == nil {
		t.Fatal("no Service ewgate")
	}
	if str(svc, "spec", "type") != "LoadBalancer" || str(svc, "spec", "externalTrafficPolicy") != "Local" {
		t.Errorf("Service: want type LoadBalancer, externalTrafficPolicy Local")
	}
	if str(svc, "metadata", "labels", "topology.istio.io/network") == "" {
		t.Error("Service without the label topology.istio.io/network")
	}
	var ports []int64
	for _, p := range list(svc, "spec", "ports") {
		ports = append(ports, num(p, "port"))
	}
	if fmt.Sprint(ports) != "[15021 15443 15012]" {
		t.Errorf("%s: Service ports %v, want [15021 15443 15012]", overlay, ports)
	}
}

// Helpers for walking unstructured YAML.

func obj(m map[string]any, path ...string) map[string]any {
	for _, k := range path {
		next, _ := m[k].(map[string]any)
		if next == nil {
			return nil
		}
		m = next
	}
	return m
}

func str(m map[string]any, path ...string) string {
	s, _ := obj(m, path[:len(path)-1]...)[path[len(path)-1]].(string)
	return s
}

func num(m map[string]any, path ...string) int64 {
	f, _ := obj(m, path[:len(path)-1]...)[path[len(path)-1]].(float64)
	return int64(f)
}

func list(m map[string]any, path ...string) []map[string]any {
	l, _ := obj(m, path[:len(path)-1]...)[path[len(path)-1]].([]any)
	var out []map[string]any
	for _, v := range l {
		if o, ok := v.(map[string]any); ok {
			out = append(out, o)
		}
	}
	return out
}

func container(t *testing.T, dep map[string]any) map[string]any {
	t.Helper()
	for _, c := range list(dep, "spec", "template", "spec", "containers") {
		if str(c, "name") == "ewgate" {
			return c
		}
	}
	t.Fatal("Deployment has no container ewgate")
	return nil
}
