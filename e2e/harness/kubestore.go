package harness

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"

	"github.com/ewgate/ewgate/registrar/kube"
)

// Resources the registrar's kube store writes.
var (
	WorkloadEntriesGVR = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadentries"}
	WorkloadGroupsGVR  = schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "workloadgroups"}
	LeasesGVR          = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}
)

// StoreConfig is the admin rest.Config for a registrar store: no overall request timeout
// (client-go applies rest.Config.Timeout to watches too, which would end them after it).
func (a *APIServer) StoreConfig() *rest.Config {
	c := rest.CopyConfig(a.Config)
	c.Timeout = 0
	return c
}

// NewKubeStore starts a registrar/kube store on this apiserver (admin credentials), closed
// when the test ends. Each call is its own client with its own cache, as a separate gateway
// process would be.
func (a *APIServer) NewKubeStore(t testing.TB, o kube.Options) *kube.Store {
	t.Helper()
	if o.Config == nil {
		o.Config = a.StoreConfig()
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
