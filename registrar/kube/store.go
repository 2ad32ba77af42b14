package kube

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ewgate/ewgate/registrar"
)

// Options configure a Store.
type Options struct {
	// Config reaches the API server (see RESTConfig). Required. If its QPS and Burst are zero,
	// DefaultQPS and DefaultBurst are used instead of client-go's 5 and 10, which would hold a
	// fleet's registrations to five writes per second.
	Config *rest.Config
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

// Client rate limits used when the rest.Config leaves them zero.
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

// RESTConfig returns the configuration of the cluster ewgate runs in when kubeconfig is
// empty, else of the kubeconfig file's current context.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("registrar/kube: in-cluster config: %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("registrar/kube: kubeconfig: %w", err)
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
	cfg := rest.CopyConfig(opts.Config)
	if cfg.QPS == 0 && cfg.Burst == 0 {
		cfg.QPS, cfg.Burst = DefaultQPS, DefaultBurst
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("registrar/kube: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &Store{opts: opts, ctx: sctx, cancel: cancel}
	s.leases = &leases{client: dyn.Resource(leasesGVR), namespace: opts.LeaseNamespace}
	s.entries = &resource[*registrar.WorkloadEntry]{
		s: s, name: "workloadentries", apiVersion: registrar.IstioAPIVersion, kind: registrar.KindWorkloadEntry,
		client: dyn.Resource(workloadEntriesGVR), hasStatus: true,
		cache: newObjectCache("workloadentries", func(u *unstructured.Unstructured) (*registrar.WorkloadEntry, error) {
			return fromUnstructured(u, &registrar.WorkloadEntry{})
		}, s.logError),
	}
	s.groups = &resource[*registrar.WorkloadGroup]{
		s: s, name: "workloadgroups", apiVersion: registrar.IstioAPIVersion, kind: registrar.KindWorkloadGroup,
		client: dyn.Resource(workloadGroupsGVR),
		cache: newObjectCache("workloadgroups", func(u *unstructured.Unstructured) (*registrar.WorkloadGroup, error) {
			return fromUnstructured(u, &registrar.WorkloadGroup{})
		}, s.logError),
	}
	// A missing CRD or permission shows here as an error, not as a cache that never syncs.
	for _, c := range []dynamic.NamespaceableResourceInterface{s.entries.client, s.groups.client} {
		if _, err := c.List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			cancel()
			return nil, fmt.Errorf("registrar/kube: list: %w", err)
		}
	}
	stop := sctx.Done()
	startReflector(s, s.entries.client, s.entries.cache, "workloadentries", stop)
	startReflector(s, s.groups.client, s.groups.cache, "workloadgroups", stop)
	if err := s.waitSynced(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// startReflector lists and watches one kind in all namespaces into c until stop closes.
// Lists are consistent reads (no resourceVersion), not the API server's possibly older watch
// cache, so that a new Store never shows objects deleted before it started.
func startReflector[T registrar.Object[T]](s *Store, client dynamic.NamespaceableResourceInterface, c *objectCache[T], name string, stop <-chan struct{}) {
	lw := &cache.ListWatch{
		ListFunc: func(o metav1.ListOptions) (runtime.Object, error) {
			o.ResourceVersion, o.ResourceVersionMatch = "", ""
			return client.List(s.ctx, o)
		},
		WatchFunc: func(o metav1.ListOptions) (watch.Interface, error) {
			return client.Watch(s.ctx, o)
		},
	}
	r := cache.NewReflectorWithOptions(lw, &unstructured.Unstructured{}, c, cache.ReflectorOptions{
		Name: "registrar/kube " + name, TypeDescription: name,
	})
	s.wg.Go(func() { r.Run(stop) })
}

func (s *Store) waitSynced(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.SyncTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(ctx.Done(), s.entries.cache.hasSynced, s.groups.cache.hasSynced) {
		return fmt.Errorf("registrar/kube: caches not synced within %s", s.opts.SyncTimeout)
	}
	return nil
}

// Close stops the caches and every watch of the store and waits for their goroutines.
func (s *Store) Close() {
	s.cancel()
	s.wg.Wait()
}

func (s *Store) logError(err error) {
	if s.ctx.Err() == nil {
		s.opts.Logger.Warn("registrar/kube", zap.Error(err))
	}
}
