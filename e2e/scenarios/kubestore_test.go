package scenarios

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ewgate/ewgate/e2e/harness"
	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube"
	"github.com/ewgate/ewgate/registrar/storetest"
)

// TestKubeStoreConformance: the registrar's Store conformance suite against the real apiserver
// with the Istio CRDs (issue 3, scenario 1). Every case gets a new store (a new client and
// cache) on emptied namespaces.
func TestKubeStoreConformance(t *testing.T) {
	cluster.LogOnFailure(t)
	storetest.Run(t, func(t *testing.T) registrar.Store {
		ctx := harness.Context(t, 30*time.Second)
		for _, ns := range storetest.Namespaces {
			if err := cluster.API.EmptyNamespace(ctx, ns); err != nil {
				t.Fatal(err)
			}
		}
		return cluster.API.NewKubeStore(t, kube.Options{})
	})
}

// TestKubeStoreObjectsReadBackWithKubectl: what the kube store writes passes the CRDs'
// validation and the real kubectl reads back the same entry and group (metadata, spec,
// status); an entry the CRD's rules refuse is refused through the store too.
func TestKubeStoreObjectsReadBackWithKubectl(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 60*time.Second)
	ns := cluster.Namespace(t, "kubestore")
	s := cluster.API.NewKubeStore(t, kube.Options{})

	g, err := s.WorkloadGroups().Create(ctx, storetest.Group(ns, "web"))
	if err != nil {
		t.Fatal(err)
	}
	in := storetest.Entry(ns, "web-10.0.0.5-vm-net")
	in.OwnerReferences[0].UID = g.UID
	in.Annotations[registrar.AnnotationConnectedAt] = "2026-03-01T12:00:00.123456789Z"
	in.Annotations[registrar.AnnotationWorkloadController] = "gw-1"
	e, err := s.WorkloadEntries().Create(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 1, 12, 0, 1, 0, time.UTC)
	e.Status.Conditions = []registrar.Condition{{Type: registrar.ConditionHealthy, Status: "True", LastProbeTime: at, LastTransitionTime: at, Message: "probe ok"}}
	if e, err = s.WorkloadEntries().UpdateStatus(ctx, e); err != nil {
		t.Fatal(err)
	}

	var back registrar.WorkloadEntry
	kubectlGet(t, &back, "-n", ns, "get", "workloadentries", in.Name)
	want := e.DeepCopy()
	if !reflect.DeepEqual(back.Labels, want.Labels) || !reflect.DeepEqual(back.Annotations, want.Annotations) ||
		!reflect.DeepEqual(back.OwnerReferences, want.OwnerReferences) || !reflect.DeepEqual(back.Spec, want.Spec) ||
		!reflect.DeepEqual(back.Status, want.Status) || back.UID != want.UID || back.ResourceVersion != want.ResourceVersion {
		t.Fatalf("kubectl reads another entry:\n got %+v\nwant %+v", back, *want)
	}
	var gback registrar.WorkloadGroup
	kubectlGet(t, &gback, "-n", ns, "get", "workloadgroups", "web")
	if !reflect.DeepEqual(gback.Spec, g.Spec) || gback.UID != g.UID {
		t.Fatalf("kubectl reads another group:\n got %+v\nwant %+v", gback.Spec, g.Spec)
	}

	// The CRD's own validation applies to the store's writes.
	bad := storetest.Entry(ns, "bad-port")
	bad.Spec.Ports["http"] = 70000
	if _, err := s.WorkloadEntries().Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "port must be between 1-65535") {
		t.Fatalf("entry with port 70000: %v", err)
	}
	noAddr := storetest.Entry(ns, "no-address")
	noAddr.Spec.Address, noAddr.Spec.Network = "", ""
	if _, err := s.WorkloadEntries().Create(ctx, noAddr); err == nil || !strings.Contains(err.Error(), "Address is required") {
		t.Fatalf("entry without address or network: %v", err)
	}
}

// kubectlGet runs kubectl get ... -o yaml and decodes the object into out.
func kubectlGet(t *testing.T, out any, args ...string) {
	t.Helper()
	ctx := harness.Context(t, 30*time.Second)
	y, err := cluster.API.Kubectl(ctx, append(args, "-o", "yaml")...)
	if err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, y)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(j, out); err != nil {
		t.Fatal(err)
	}
}
