package gateway

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

var errRefused = errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")

// TestStoreReachedLate: cluster-b's API server is out of reach when the gateway starts. The
// gateway starts anyway: cluster-a's VMs register, the VM side says it is degraded, a VM of
// cluster-b is refused with Unavailable naming its cluster, and b's store is retried in the
// background. A reload meanwhile changes b's groups. Once b's store opens, the reloaded groups
// are written to it and the VM of cluster-b registers there and reaches b's istiod.
func TestStoreReachedLate(t *testing.T) {
	storeA, storeB := registrar.NewMemoryStore(), registrar.NewMemoryStore()
	var up atomic.Bool
	var attempts atomic.Int32
	tc := startTwoClustersOpen(t, func(kubeconfig string) (registrar.Store, error) {
		if kubeconfig == "a.kubeconfig" {
			return storeA, nil
		}
		attempts.Add(1)
		if !up.Load() {
			return nil, errRefused
		}
		return storeB, nil
	})
	h := tc.g.handler()
	testkit.Eventually(t, "ready", func() bool { return get(h, "/healthz/ready") == 200 })
	if code := get(h, "/healthz/control"); code != 503 {
		t.Fatalf("/healthz/control: %d with cluster-b's store out of reach; want 503", code)
	}
	if n := tc.logs.FilterMessageSnippet("registration store out of reach at start").FilterField(zap.Error(errRefused)).Len(); n != 1 {
		t.Fatalf("%d log lines saying cluster-b's store is out of reach, with the error; want 1", n)
	}
	if err := tc.register(t, tc.issuerA, "cluster-a", "10.0.1.1"); err != nil {
		t.Fatalf("VM of cluster-a while cluster-b's store is out of reach: %v", err)
	}
	err := tc.register(t, tc.issuerB, "cluster-b", "10.0.2.1")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `store of cluster "cluster-b" has not been reached`) ||
		!strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("VM of cluster-b while its store is out of reach: %v; want Unavailable naming the store and why", err)
	}
	if len(tc.b.seen()) != 0 {
		t.Fatalf("cluster-b's istiod saw %v; a VM that cannot be registered must not reach it", tc.b.seen())
	}
	testkit.Eventually(t, "retried", func() bool { return attempts.Load() >= 3 })

	// A reload while b is out of reach drops b's group db: b gets the reloaded groups.
	dropDB := strings.Replace(tc.yaml, `  - cluster: cluster-b
    metadata: {name: db, namespace: vms}
    spec: {template: {serviceAccount: db}}
`, "", 1)
	if dropDB == tc.yaml {
		t.Fatal("test: the config has no group db of cluster-b to drop")
	}
	testkit.WriteFile(t, filepath.Dir(tc.path), filepath.Base(tc.path), []byte(dropDB))
	tc.g.Reload("test")
	testkit.Eventually(t, "reloaded", func() bool { return tc.logs.FilterMessage("config reloaded").Len() >= 1 })

	up.Store(true)
	testkit.Eventually(t, "cluster-b's store reached", func() bool { return get(h, "/healthz/control") == 200 })
	if got := names(t, storeB); got != "[web]" {
		t.Fatalf("groups in cluster-b's store once reached: %s; want [web], the reloaded config's", got)
	}
	if err := tc.register(t, tc.issuerB, "cluster-b", "10.0.2.1"); err != nil {
		t.Fatalf("VM of cluster-b once its store is reached: %v", err)
	}
	list, _, err := storeB.WorkloadEntries().List(t.Context(), "vms", registrar.ListOptions{})
	if err != nil || len(list) != 1 || list[0].Spec.Address != "10.0.2.1" {
		t.Fatalf("entries in cluster-b's store: %v, %v; want 10.0.2.1", list, err)
	}
	if len(tc.b.seen()) != 1 {
		t.Fatalf("cluster-b's istiod saw %v; want the VM of cluster-b", tc.b.seen())
	}
	if tc.logs.FilterMessageSnippet("registration store reached").Len() != 1 {
		t.Fatal("no log line saying cluster-b's store was reached")
	}
}

// TestStoreOfBuiltinNeededAtStart: the store whose WorkloadEntries the built-in control plane
// serves (cluster-a's) must be reached at start; the error names its field and says why.
func TestStoreOfBuiltinNeededAtStart(t *testing.T) {
	_, err := tryTwoClusters(t, func(kubeconfig string) (registrar.Store, error) {
		if kubeconfig == "a.kubeconfig" {
			return nil, errRefused
		}
		return registrar.NewMemoryStore(), nil
	})
	if err == nil || !strings.Contains(err.Error(), "kubernetes.clusters[0] (cluster-a)") || !strings.Contains(err.Error(), "built-in control plane") ||
		!errors.Is(err, errRefused) {
		t.Fatalf("start with cluster-a's store out of reach: %v; want an error naming kubernetes.clusters[0] and the built-in control plane", err)
	}
}

// names are the names of the workload groups of namespace vms in s.
func names(t *testing.T, s *registrar.MemoryStore) string {
	t.Helper()
	list, _, err := s.WorkloadGroups().List(t.Context(), "vms", registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, g := range list {
		out = append(out, g.Name)
	}
	return fmt.Sprint(out)
}
