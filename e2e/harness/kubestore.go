package harness

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/ewgate/ewgate/registrar/kube"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// Resources the registrar's kube store writes.
var (
	WorkloadEntriesGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}
	WorkloadGroupsGVR  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadgroups"}
	LeasesGVR          = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}
)

// StoreConfig is the registrar store's client config: the admin kubeconfig (CA data and a
// token) read by the store's own loader, as a gateway given that kubeconfig reads it.
func (a *APIServer) StoreConfig(t testing.TB) *kapi.Config {
	t.Helper()
	c, err := kube.ClientConfig(a.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NewKubeStore starts a registrar/kube store on this apiserver (admin credentials), closed
// when the test ends. Each call is its own client with its own cache, as a separate gateway
// process would be.
func (a *APIServer) NewKubeStore(t testing.TB, o kube.Options) *kube.Store {
	t.Helper()
	if o.Config == nil {
		o.Config = a.StoreConfig(t)
	}
	if o.SyncTimeout == 0 {
		o.SyncTimeout = time.Minute
	}
	s, err := kube.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// EmptyNamespace deletes every WorkloadEntry, WorkloadGroup and Lease in ns (creating ns if
// needed): namespaces are never deleted here (no namespace controller), so a test that needs
// fixed, empty namespaces empties them.
func (a *APIServer) EmptyNamespace(ctx context.Context, ns string) error {
	if err := a.CreateNamespace(ctx, ns, nil); err != nil {
		return err
	}
	for _, gvr := range []schema.GroupVersionResource{WorkloadEntriesGVR, WorkloadGroupsGVR, LeasesGVR} {
		err := a.Dynamic.Resource(gvr).Namespace(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		if err != nil {
			return fmt.Errorf("harness: empty %s in %s: %w", gvr.Resource, ns, err)
		}
	}
	return nil
}
