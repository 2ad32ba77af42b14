package gateway

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/registrar"
)

// A Kubernetes registration store whose API server is out of reach at start (a cluster of
// kubernetes.clusters still coming up, a network between the clusters down) no longer stops the
// gateway: the mesh listeners and the other clusters' VMs are served, the VM side reports itself
// degraded (GET /healthz/control 503, ewgate_control_ready 0), VMs of that store's cluster are
// refused with Unavailable (pilot-agent retries), and the store is opened again with backoff.
// Once it opens, its registrar starts and the config's workload groups (the latest reload's) are
// written to it. Only the store whose WorkloadEntries the built-in control plane serves must be
// reached at start (openStores).

// Store retry backoff: doubled after each failure up to the maximum.
const (
	storeRetryInitial = 500 * time.Millisecond
	storeRetryMax     = 30 * time.Second
	storeLogEvery     = 10 // failures between two log lines (about five minutes at the maximum)
)

// reach opens st again with backoff until it opens, then runs its registrar and group sync; it
// returns when they run or ctx ends.
func (vm *vmSide) reach(ctx context.Context, p *components, sr *storeRegistrar) error {
	st := sr.st
	since := time.Now()
	backoff := storeRetryInitial
	t := time.NewTimer(backoff)
	defer t.Stop()
	for failures := 1; ; failures++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s, release, err := st.reopen(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			sr.mu.Lock()
			st.err = err
			sr.mu.Unlock()
			if failures%storeLogEvery == 0 {
				st.log.Error("registration store still out of reach: VMs of its cluster are refused until it is reached; ewgate retries",
					zap.String("field", st.field), zap.Int("failed_attempts", failures), zap.Duration("out_of_reach_for", time.Since(since)), zap.Error(err))
			}
			backoff = min(2*backoff, storeRetryMax)
			t.Reset(backoff)
			continue
		}
		st.st, st.close = s, release
		if err := vm.open(p, sr); err != nil {
			return err
		}
		p.health.set(func(h *controlHealth) { h.groupsDown.Add(-1) }) // counted while out of reach
		st.log.Info("registration store reached: VMs of its cluster register again",
			zap.String("field", st.field), zap.Int("failed_attempts", failures), zap.Duration("out_of_reach_for", time.Since(since)))
		p.goRun("registrar", sr.reg.Load().Run)
		p.goRun("workload group sync", sr.groups.run)
		return nil
	}
}

// update makes groups the store's workload groups: written now to an open store (retried in
// the background on failure), or kept until the store is reached.
func (sr *storeRegistrar) update(ctx context.Context, groups []*registrar.WorkloadGroup) error {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	if sr.groups == nil {
		sr.want = groups
		return nil
	}
	return sr.groups.update(ctx, groups)
}
