package controlplane

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/registrar"
)

// watchEntries keeps s.entries equal to the store's WorkloadEntries: list, then watch from the
// list's version; when the watch ends (store restart, slow watcher, ErrGone) list again. Each
// change pokes the push loop. Without a store it pokes once, for the static endpoints.
func (s *Server) watchEntries(ctx context.Context) {
	if s.opts.Entries == nil {
		s.poke()
		return
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		if s.listAndWatch(ctx) {
			backoff = 100 * time.Millisecond
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// listAndWatch reports whether it got as far as watching.
func (s *Server) listAndWatch(ctx context.Context) bool {
	items, rv, err := s.opts.Entries.List(ctx, "", registrar.ListOptions{})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("control plane: listing workload entries", zap.Error(err))
		}
		return false
	}
	m := make(map[string]*registrar.WorkloadEntry, len(items))
	for _, e := range items {
		m[e.Namespace+"/"+e.Name] = e
	}
	s.mu.Lock()
	s.entries = m
	s.full = true
	s.mu.Unlock()
	s.poke()
	ch, err := s.opts.Entries.Watch(ctx, "", rv)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, registrar.ErrGone) {
			s.log.Warn("control plane: watching workload entries", zap.Error(err))
		}
		return false
	}
	for ev := range ch {
		k := ev.Object.Namespace + "/" + ev.Object.Name
		s.mu.Lock()
		if ev.Type == registrar.Deleted {
			delete(s.entries, k)
		} else {
			s.entries[k] = ev.Object
		}
		s.dirty[k] = true
		s.mu.Unlock()
		s.m.entryEvents.Inc()
		s.poke()
	}
	return true
}
