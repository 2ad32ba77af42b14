package deploy_test

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/config"
)

// The Kubernetes manifests' ports, read without a cluster (the e2e suite renders and dry-runs
// them): the load balancer publishes readiness, the mesh and the VMs' endpoint only; Prometheus
// scrapes the metrics port on the pod; the debug admin stays on the pod's loopback. The overlays'
// admin sections are loaded by the real config loader, which must find nothing risky in them.

type k8sPort struct {
	Name          string `yaml:"name"`
	Port          int    `yaml:"port"`
	ContainerPort int    `yaml:"containerPort"`
}

type deployment struct {
	Spec struct {
		Template struct {
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec struct {
				Containers []struct {
					Ports          []k8sPort `yaml:"ports"`
					ReadinessProbe struct {
						HTTPGet struct {
							Path string `yaml:"path"`
							Port int    `yaml:"port"`
						} `yaml:"httpGet"`
					} `yaml:"readinessProbe"`
				} `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func portOf(t *testing.T, what, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Fatalf("%s %q is not host:port", what, addr)
	}
	return n
}

// overlayAdmin loads an overlay config's admin section with the real loader (the rest of the
// file names secrets that exist only in a pod).
func overlayAdmin(t *testing.T, path string) config.Admin {
	t.Helper()
	var doc struct {
		Admin yaml.Node `yaml:"admin"`
	}
	readYAML(t, path, &doc)
	section, err := yaml.Marshal(map[string]*yaml.Node{"admin": &doc.Admin})
	if err != nil {
		t.Fatal(err)
	}
	f, err := config.Parse(section, path)
	if err != nil {
		t.Fatalf("%s: admin section: %v", path, err)
	}
	if len(f.Warnings) > 0 {
		t.Errorf("%s: the admin section warns: %v", path, f.Warnings)
	}
	return f.Admin
}

func TestKubernetesPorts(t *testing.T) {
	var svc struct {
		Spec struct {
			Ports []k8sPort `yaml:"ports"`
		} `yaml:"spec"`
	}
	readYAML(t, "kubernetes/base/service.yaml", &svc)
	var published []int
	for _, p := range svc.Spec.Ports {
		published = append(published, p.Port)
	}
	if !slices.Equal(published, []int{15021, 15443, 15012}) {
		t.Errorf("the Service publishes %v; want only 15021 (readiness), 15443 (mesh), 15012 (VMs)", published)
	}

	var dep deployment
	readYAML(t, "kubernetes/base/deployment.yaml", &dep)
	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%d containers; want 1", len(dep.Spec.Template.Spec.Containers))
	}
	ctr := dep.Spec.Template.Spec.Containers[0]
	probe := ctr.ReadinessProbe.HTTPGet
	containerPorts := map[string]int{}
	for _, p := range ctr.Ports {
		containerPorts[p.Name] = p.ContainerPort
	}
	ann := dep.Spec.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v: want prometheus.io/scrape true and path /metrics", ann)
	}

	for _, overlay := range []string{"istiod", "standalone"} {
		path := filepath.Join("kubernetes", "overlays", overlay, "ewgate.yaml")
		a := overlayAdmin(t, path)
		if a.Pprof {
			t.Errorf("%s: pprof on", path)
		}
		status, metrics := portOf(t, "admin.status_address", a.StatusAddress), portOf(t, "admin.metrics_address", a.MetricsAddress)
		admin := portOf(t, "admin.address", a.Address)
		if !strings.HasPrefix(a.Address, "127.0.0.1:") {
			t.Errorf("%s: admin.address %s; want the pod's loopback (debug pages, reached with kubectl port-forward)", path, a.Address)
		}
		if probe.Path != "/healthz/ready" || probe.Port != status || status != 15021 {
			t.Errorf("%s: readiness probe GET %s on %d, status server on %d; want GET /healthz/ready on the status port 15021", path, probe.Path, probe.Port, status)
		}
		if containerPorts["http-metrics"] != metrics || ann["prometheus.io/port"] != strconv.Itoa(metrics) {
			t.Errorf("%s: metrics on %d, containerPort http-metrics %d, prometheus.io/port %q; want all three the same",
				path, metrics, containerPorts["http-metrics"], ann["prometheus.io/port"])
		}
		for _, p := range []int{metrics, admin} {
			if slices.Contains(published, p) {
				t.Errorf("%s: the Service publishes port %d (metrics or debug admin)", path, p)
			}
		}
		for name, p := range containerPorts {
			if p == admin {
				t.Errorf("%s: container port %s is the debug admin's %d", path, name, p)
			}
		}
	}
}

// TestLocalExampleSplit: `make run` serves the same split, on loopback only.
func TestLocalExampleSplit(t *testing.T) {
	f, err := config.Load("local/ewgate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Warnings) > 0 {
		t.Errorf("the local example warns: %v", f.Warnings)
	}
	a := f.Admin
	if a.Address != "127.0.0.1:15000" || a.StatusAddress != "127.0.0.1:15021" || a.MetricsAddress != "127.0.0.1:15020" {
		t.Errorf("local example admin %+v; want debug 127.0.0.1:15000, status 127.0.0.1:15021, metrics 127.0.0.1:15020", a)
	}
	run, err := os.ReadFile("local/run.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"http://127.0.0.1:15021/healthz/ready", "http://127.0.0.1:15020/metrics", "http://127.0.0.1:15000/debug/routes"} {
		if !strings.Contains(string(run), want) {
			t.Errorf("run.sh does not print %s", want)
		}
	}
}
