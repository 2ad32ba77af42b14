package vmcontrol_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

// outageStore is the registrar's memory store whose WorkloadEntry writes fail while down is set,
// as a store with a full disk does until space returns. (A full disk cannot be made in a test
// run as root on a shared machine; everything else is the real memory store.)
type outageStore struct {
	*registrar.MemoryStore
	down *atomic.Bool
}

type outageEntries struct {
	registrar.Resource[*registrar.WorkloadEntry]
	down *atomic.Bool
}

func (s outageStore) WorkloadEntries() registrar.Resource[*registrar.WorkloadEntry] {
	return outageEntries{s.MemoryStore.WorkloadEntries(), s.down}
}

func (e outageEntries) Create(ctx context.Context, we *registrar.WorkloadEntry) (*registrar.WorkloadEntry, error) {
	if e.down.Load() {
		return nil, errStoreDown
	}
	return e.Resource.Create(ctx, we)
}

func (e outageEntries) Update(ctx context.Context, we *registrar.WorkloadEntry) (*registrar.WorkloadEntry, error) {
	if e.down.Load() {
		return nil, errStoreDown
	}
	return e.Resource.Update(ctx, we)
}

func (e outageEntries) UpdateStatus(ctx context.Context, we *registrar.WorkloadEntry) (*registrar.WorkloadEntry, error) {
	if e.down.Load() {
		return nil, errStoreDown
	}
	return e.Resource.UpdateStatus(ctx, we)
}

// TestFailedRegistrationLeavesNothing: the store cannot write while VMs register, their ADS calls
// fail (the register timeout, or the VM giving up during the wait), the store recovers, and
// after the grace period no WorkloadEntry and no registration is left.
func TestFailedRegistrationLeavesNothing(t *testing.T) {
	mem := registrar.NewMemoryStore()
	if _, err := mem.WorkloadGroups().Create(t.Context(), &registrar.WorkloadGroup{
		ObjectMeta: registrar.ObjectMeta{Name: "web", Namespace: vmNS},
		Spec:       registrar.WorkloadGroupSpec{Template: registrar.WorkloadEntrySpec{ServiceAccount: vmSA}},
	}); err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	down.Store(true)
	clock := &fakeClock{testkit.NewClock(t0)}
	r, err := registrar.New(registrar.Config{Instance: "gw-1", GracePeriod: registrar.Duration(grace)},
		registrar.Options{Store: outageStore{mem, &down}, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { r.Run(ctx); close(runDone) }()
	t.Cleanup(func() { cancel(); <-runDone })

	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		RegisterTimeout: 200 * time.Millisecond}, vmcontrol.Options{Registrar: r})
	cc := g.dial(t, p)
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)

	// VM 1 waits out the register timeout.
	s1, err := ads.StreamAggregatedResources(withToken(t.Context(), token(t, vmNS, vmSA)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Send(&discoveryv3.DiscoveryRequest{Node: vmNode("web", "10.0.0.5", "c1"), TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Recv(); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "in time") {
		t.Fatalf("VM 1: %v, want Unavailable after the register timeout", err)
	}
	// VM 2 gives up during the wait (its context ends).
	vm2, stop2 := context.WithCancel(withToken(t.Context(), token(t, vmNS, vmSA)))
	s2, err := ads.StreamAggregatedResources(vm2)
	if err != nil {
		t.Fatal(err)
	}
	n2 := vmNode("web", "10.0.0.6", "c1")
	n2.Id = "sidecar~10.0.0.6~vm-2." + vmNS + "~" + vmNS + ".svc.cluster.local"
	if err := s2.Send(&discoveryv3.DiscoveryRequest{Node: n2, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "VM 2 is waiting for its registration", func() bool {
		for _, reg := range r.Registrations() {
			if reg.NodeID == n2.Id {
				return true
			}
		}
		return false
	})
	stop2()
	if _, err := s2.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("VM 2: %v, want Canceled", err)
	}

	down.Store(false) // the store recovers; the queued writes go through
	testkit.Eventually(t, "no entry and no registration left after the grace period", func() bool {
		clock.Advance(time.Second)
		list, _, err := mem.WorkloadEntries().List(context.Background(), "", registrar.ListOptions{})
		return err == nil && len(list) == 0 && len(r.Registrations()) == 0
	})
}
