package registrar_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/storetest"
)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) registrar.Store { return registrar.NewMemoryStore() })
}

func TestFileStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) registrar.Store { return openFileStore(t, t.TempDir()) })
}

func openFileStore(t testing.TB, dir string) *registrar.FileStore {
	t.Helper()
	s, err := registrar.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestFileStoreYAML checks the file is what `kubectl get workloadentry -o yaml` shows.
func TestFileStoreYAML(t *testing.T) {
	dir := t.TempDir()
	s := openFileStore(t, dir)
	e := storetest.Entry("vm-ns", "web-10.0.0.5-vm-net")
	if _, err := s.WorkloadEntries().Create(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	s.Flush() // the file is written shortly after the write is durable in the journal
	data, err := os.ReadFile(filepath.Join(dir, "workloadentries", "vm-ns", "web-10.0.0.5-vm-net.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, want := range []string{
		"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n",
		"  name: web-10.0.0.5-vm-net\n", "  namespace: vm-ns\n", "  resourceVersion: \"",
		"  ownerReferences:\n    - apiVersion: networking.istio.io/v1\n      kind: WorkloadGroup\n",
		"      controller: true\n", "spec:\n  address: 10.0.0.5\n", "  locality: eu/eu-1/a\n",
		"    http: 8080\n", "  serviceAccount: web-sa\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("file lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "status:") {
		t.Errorf("empty status written:\n%s", text)
	}
	var back registrar.WorkloadEntry
	if err := registrar.DecodeObject(data, registrar.KindWorkloadEntry, &back); err != nil {
		t.Fatal(err)
	}
	if back.Spec.Address != "10.0.0.5" || back.Spec.Ports["grpc"] != 9090 {
		t.Fatalf("decoded %+v", back.Spec)
	}
}

// TestFileStoreRestart: objects, UIDs and status survive a restart; resource versions go on
// increasing; a crash's temporary file is removed; deletes are durable.
func TestFileStoreRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := registrar.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	es := s.WorkloadEntries()
	a, _ := es.Create(t.Context(), storetest.Entry("ns", "a"))
	a.Status.Conditions = []registrar.Condition{{Type: registrar.ConditionHealthy, Status: "True"}}
	a, err = es.UpdateStatus(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := es.Create(t.Context(), storetest.Entry("ns", "b"))
	if err := es.Delete(t.Context(), "ns", "b", registrar.Preconditions{UID: b.UID}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WorkloadGroups().Create(t.Context(), storetest.Group("ns", "web")); err != nil {
		t.Fatal(err)
	}
	if _, err := registrar.OpenFileStore(dir); err == nil {
		t.Fatal("a second open of a locked directory succeeded")
	}
	_ = s.Close()
	tmp := filepath.Join(dir, "workloadentries", "ns", ".c.yaml.tmp-123")
	if err := os.WriteFile(tmp, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}

	s2 := openFileStore(t, dir)
	got, err := s2.WorkloadEntries().Get(t.Context(), "ns", "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.UID != a.UID || got.ResourceVersion != a.ResourceVersion || got.Status.Condition(registrar.ConditionHealthy) == nil {
		t.Fatalf("after restart: %+v (before %+v)", got, a)
	}
	if _, err := s2.WorkloadEntries().Get(t.Context(), "ns", "b"); err == nil {
		t.Fatal("deleted object came back after restart")
	}
	if _, err := s2.WorkloadGroups().Get(t.Context(), "ns", "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
	c, err := s2.WorkloadEntries().Create(t.Context(), storetest.Entry("ns", "c"))
	if err != nil {
		t.Fatal(err)
	}
	if rv(t, c.ResourceVersion) <= rv(t, a.ResourceVersion) {
		t.Fatalf("resourceVersion went back: %s after %s", c.ResourceVersion, a.ResourceVersion)
	}
	_, err = s2.WorkloadEntries().Watch(t.Context(), "", "1")
	if !errors.Is(err, registrar.ErrGone) {
		t.Fatal("watch from before the restart did not fail with ErrGone")
	}
}

func rv(t *testing.T, s string) uint64 {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSyncGroups(t *testing.T) {
	s := registrar.NewMemoryStore()
	gs := s.WorkloadGroups()
	foreign := webGroup()
	foreign.Name = "from-kubectl"
	if _, err := gs.Create(t.Context(), foreign); err != nil {
		t.Fatal(err)
	}
	db := webGroup()
	db.Name = "db"
	if err := registrar.SyncGroups(t.Context(), gs, []*registrar.WorkloadGroup{webGroup(), db}); err != nil {
		t.Fatal(err)
	}
	web1, err := gs.Get(t.Context(), ns, "web")
	if err != nil || web1.Annotations[registrar.AnnotationSource] != "config" {
		t.Fatalf("web: %v %v", web1, err)
	}
	// The same config again writes nothing.
	if err := registrar.SyncGroups(t.Context(), gs, []*registrar.WorkloadGroup{webGroup(), db}); err != nil {
		t.Fatal(err)
	}
	if again, _ := gs.Get(t.Context(), ns, "web"); again.ResourceVersion != web1.ResourceVersion {
		t.Fatal("unchanged group rewritten")
	}
	// A changed template is updated in place (same UID); a dropped group is deleted; a group
	// the config never managed is left alone.
	changed := webGroup()
	changed.Spec.Template.Ports["grpc"] = 9090
	if err := registrar.SyncGroups(t.Context(), gs, []*registrar.WorkloadGroup{changed}); err != nil {
		t.Fatal(err)
	}
	web2, err := gs.Get(t.Context(), ns, "web")
	if err != nil || web2.UID != web1.UID || web2.Spec.Template.Ports["grpc"] != 9090 {
		t.Fatalf("web after change: %+v %v", web2, err)
	}
	if _, err := gs.Get(t.Context(), ns, "db"); err == nil {
		t.Fatal("group dropped from the config still present")
	}
	if _, err := gs.Get(t.Context(), ns, "from-kubectl"); err != nil {
		t.Fatalf("foreign group deleted: %v", err)
	}
	bad := webGroup()
	bad.Name = "Bad_Name"
	if err := registrar.SyncGroups(t.Context(), gs, []*registrar.WorkloadGroup{bad}); err == nil {
		t.Fatal("invalid group name accepted")
	}
	if err := registrar.SyncGroups(t.Context(), gs, []*registrar.WorkloadGroup{webGroup(), webGroup()}); err == nil {
		t.Fatal("duplicate group accepted")
	}
}
