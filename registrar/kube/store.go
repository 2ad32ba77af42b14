package kube

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
)

// Options configure a Store.
type Options struct {
	// Config reaches the API server (see ClientConfig). Required. If its QPS and Burst are
	// zero, DefaultQPS and DefaultBurst are used (client-go's 5 and 10 would hold a fleet's
	// registrations to five writes per second).
	Config *kapi.Config
	// LeaseNamespace, if set, is the only namespace Leases may be read or written in: the
	// registrar's lease_namespace, where the replica's Role grants leases access.
	LeaseNamespace string
	// SyncTimeout bounds how long New waits for the first listing of entries and groups.
	// If zero, 30 s.
	SyncTimeout time.Duration
	// CacheWait bounds how long a write waits for the cache to show it, so that the writer
	// reads its own write. If zero, 5 s. A write not seen in time still succeeded; reads are
	// then stale until the watch catches up (CacheLag counts those).
	CacheWait time.Duration
	// Logger receives watch and decode errors. If nil, nothing is logged.
	Logger *zap.Logger
}

// Client rate limits used when the Config leaves them zero.
const (
	DefaultQPS   = 100
	DefaultBurst = 200
)

// Store is a registrar.Store on the Kubernetes API. Create it with New; Close it when done.
type Store struct {
	opts    Options
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	client  *kapi.Client
	entries *resource[*registrar.WorkloadEntry]
	groups  *resource[*registrar.WorkloadGroup]
	leases  *leases

	cacheLag atomic.Int64
}

var _ registrar.Store = (*Store)(nil)

// WorkloadEntries returns networking.istio.io/v1 WorkloadEntries (all namespaces).
func (s *Store) WorkloadEntries() registrar.Resource[*registrar.WorkloadEntry] { return s.entries }

// WorkloadGroups returns networking.istio.io/v1 WorkloadGroups (all namespaces).
func (s *Store) WorkloadGroups() registrar.Resource[*registrar.WorkloadGroup] { return s.groups }

// Leases returns coordination.k8s.io/v1 Leases.
func (s *Store) Leases() registrar.Leases { return s.leases }

// CacheLag returns how many writes the cache had not shown within CacheWait.
func (s *Store) CacheLag() int64 { return s.cacheLag.Load() }

// ClientConfig returns the configuration of the cluster ewgate runs in when kubeconfig is
// empty, else of the kubeconfig file's current context.
func ClientConfig(kubeconfig string) (*kapi.Config, error) {
	var c *kapi.Config
	var err error
	if kubeconfig == "" {
		c, err = kapi.InCluster()
	} else {
		c, err = kapi.Kubeconfig(kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("registrar/kube: %w", err)
	}
	return c, nil
}

// New connects to the API server, checks that the Istio kinds are served and readable, starts
// the caches of entries and groups and waits for their first listing. The caches run until
// ctx ends or Close is called.
func New(ctx context.Context, opts Options) (*Store, error) {
	if opts.Config == nil {
		return nil, errors.New("registrar/kube: Options.Config is required")
	}
	if opts.SyncTimeout <= 0 {
		opts.SyncTimeout = 30 * time.Second
	}
	if opts.CacheWait <= 0 {
		opts.CacheWait = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	cfg := *opts.Config
	if cfg.QPS == 0 && cfg.Burst == 0 {
		cfg.QPS, cfg.Burst = DefaultQPS, DefaultBurst
	}
	client, err := kapi.New(&cfg)
	if err != nil {
		return nil, fmt.Errorf("registrar/kube: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &Store{opts: opts, ctx: sctx, cancel: cancel, client: client}
	s.leases = &leases{client: client.Resource("coordination.k8s.io", "v1", "leases"), namespace: opts.LeaseNamespace}
	s.entries = &resource[*registrar.WorkloadEntry]{
		s: s, name: "workloadentries", apiVersion: registrar.IstioAPIVersion, kind: registrar.KindWorkloadEntry,
		client: client.Resource("networking.istio.io", "v1", "workloadentries"), hasStatus: true,
		cache: newObjectCache("workloadentries", func(u kapi.Object) (*registrar.WorkloadEntry, error) {
			return fromObject(u, &registrar.WorkloadEntry{})
		}, s.logError),
	}
	s.groups = &resource[*registrar.WorkloadGroup]{
		s: s, name: "workloadgroups", apiVersion: registrar.IstioAPIVersion, kind: registrar.KindWorkloadGroup,
		client: client.Resource("networking.istio.io", "v1", "workloadgroups"),
		cache: newObjectCache("workloadgroups", func(u kapi.Object) (*registrar.WorkloadGroup, error) {
			return fromObject(u, &registrar.WorkloadGroup{})
		}, s.logError),
	}
	// A missing CRD or permission shows here as an error, not as a cache that never syncs.
	for _, r := range []kapi.Resource{s.entries.client, s.groups.client} {
		if _, err := r.List(ctx, "", kapi.ListOptions{Limit: 1}); err != nil {
			cancel()
			client.Close()
			return nil, fmt.Errorf("registrar/kube: list: %w", err)
		}
	}
	s.wg.Go(func() { runReflector(sctx, s, s.entries.client, s.entries.cache, "workloadentries") })
	s.wg.Go(func() { runReflector(sctx, s, s.groups.client, s.groups.cache, "workloadgroups") })
	if err := s.waitSynced(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) waitSynced(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.SyncTimeout)
	defer cancel()
	for _, synced := range []func(context.Context, time.Duration) bool{s.entries.cache.waitSynced, s.groups.cache.waitSynced} {
		if !synced(ctx, s.opts.SyncTimeout) {
			return fmt.Errorf("registrar/kube: caches not synced within %s", s.opts.SyncTimeout)
		}
	}
	return nil
}

// Close stops the caches and every watch of the store and waits for their goroutines.
func (s *Store) Close() {
	s.cancel()
	s.wg.Wait()
	s.client.Close()
}

func (s *Store) logError(err error) {
	if s.ctx.Err() == nil {
		s.opts.Logger.Warn("registrar/kube", zap.Error(err))
	}
}
