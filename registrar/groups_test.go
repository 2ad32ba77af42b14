package registrar_test

import (
	"testing"

	"github.com/ewgate/ewgate/registrar"
)

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
