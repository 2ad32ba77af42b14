package scenarios

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ewgate/ewgate/e2e/harness"
)

// waitConnectedEntry waits until the WorkloadEntry is connected (istio.io/connectedAt) and, when
// controller is not empty, controlled by that registrar instance.
func waitConnectedEntry(t *testing.T, ns, name, controller string, within time.Duration) (*unstructured.Unstructured, error) {
	t.Helper()
	return cluster.API.WaitWorkloadEntry(harness.Context(t, within), ns, name, func(u *unstructured.Unstructured) error {
		ann := u.GetAnnotations()
		if ann["istio.io/connectedAt"] == "" || controller != "" && ann["istio.io/workloadController"] != controller {
			return fmt.Errorf("controller %q, connectedAt %q", ann["istio.io/workloadController"], ann["istio.io/connectedAt"])
		}
		return nil
	})
}

// checkWebEntry checks the entry of a VM of vmSetup's group web as Istio writes it, whoever the
// writer (istiod itself, or ewgate): the group annotation, a controller, the spec from the
// template with the VM's address and network, the group's labels, the owner reference to the
// group, and that it is the namespace's only entry.
func checkWebEntry(t *testing.T, ctx context.Context, ns string, we *unstructured.Unstructured, ip string) {
	t.Helper()
	ann := we.GetAnnotations()
	if ann["istio.io/autoRegistrationGroup"] != "web" || ann["istio.io/workloadController"] == "" {
		t.Errorf("annotations %v", ann)
	}
	spec, _ := we.Object["spec"].(map[string]any)
	if spec["address"] != ip || spec["network"] != "vmnet" || spec["serviceAccount"] != "vm" {
		t.Errorf("spec %v", spec)
	}
	if we.GetLabels()["app"] != "web" {
		t.Errorf("labels %v", we.GetLabels())
	}
	owners := we.GetOwnerReferences()
	if len(owners) != 1 || owners[0].Kind != "WorkloadGroup" || owners[0].Name != "web" || owners[0].Controller == nil || !*owners[0].Controller {
		t.Errorf("owner references %+v", owners)
	}
	if l, err := cluster.API.ListWorkloadEntries(ctx, ns); err != nil || len(l) != 1 {
		t.Errorf("%d entries (%v), want 1", len(l), err)
	}
}

// stopVMAndWaitEntryGone stops the VM's xDS client and agent, then waits for the entry to be
// marked disconnected and to be deleted within goneWithin (the writer's grace period and more).
func stopVMAndWaitEntryGone(t *testing.T, vm *harness.VM, client *harness.Proc, ns, name string, goneWithin time.Duration) {
	t.Helper()
	if err := client.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := vm.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.WaitWorkloadEntry(harness.Context(t, 30*time.Second), ns, name, func(u *unstructured.Unstructured) error {
		if u.GetAnnotations()["istio.io/disconnectedAt"] == "" {
			return fmt.Errorf("not disconnected yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := cluster.API.WaitWorkloadEntryGone(harness.Context(t, goneWithin), ns, name); err != nil {
		t.Fatal(err)
	}
}
