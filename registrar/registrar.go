package registrar

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Options are the registrar's collaborators.
type Options struct {
	// Store holds entries, groups and leases. Required.
	Store Store
	// Clock drives every timer. If nil, SystemClock is used.
	Clock Clock
	// Logger receives one line per write and per error. If nil, nothing is logged.
	Logger *zap.Logger
	// Registerer receives the ewgate_registrar_* metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
}

// Registrar turns connected VMs into WorkloadEntries and removes them after their VM has gone.
// Connect and Session methods may be called at any time, from any goroutine; the writes happen
// in Run's workers.
type Registrar struct {
	cfg     Config
	cidrs   []netip.Prefix
	entries Resource[*WorkloadEntry]
	groups  Resource[*WorkloadGroup]
	leases  Leases
	clock   Clock
	log     *zap.Logger
	m       *metrics
	queue   *workQueue
	deletes *tokenBucket
	started atomic.Bool

	mu        sync.Mutex
	workloads map[string]*workload
}

// workload is the registrar's record of one VM (one workload key) while it has streams or an
// entry to clean up.
type workload struct {
	key, ns, group string
	id             Identity
	node           Node
	addr, claimed  netip.Addr
	source         netip.Addr
	entryName      string
	sessions       int
	connectedAt    time.Time
	disconnectedAt time.Time
	written        string // the entry this registrar last wrote for the VM
	owned          bool   // written is this registrar's (it is the workloadController)
	state          string
	lastErr        string
	oldChecked     bool // entries of the same VM under another name were looked for
	health         *healthReport
	ready          chan struct{} // closed at the first successful write
	readyClosed    bool
	gen            uint64 // bumped on every change of the above by Connect/Close/SetHealth
}

type healthReport struct {
	healthy bool
	message string
	at      time.Time
}

// Workload states shown by Registrations.
const (
	statePending      = "pending"
	stateRegistered   = "registered"
	stateLost         = "owned-elsewhere"
	stateNoGroup      = "group-missing"
	stateRefused      = "refused"
	stateDisconnected = "disconnected"
)

// New returns a registrar for cfg (defaulted and validated here).
func New(cfg Config, opts Options) (*Registrar, error) {
	if opts.Store == nil {
		return nil, errors.New("registrar: Options.Store is required")
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("registrar: invalid config: %w", err)
	}
	r := &Registrar{
		cfg: cfg, entries: opts.Store.WorkloadEntries(), groups: opts.Store.WorkloadGroups(),
		leases: opts.Store.Leases(), clock: opts.Clock, log: opts.Logger,
		workloads: map[string]*workload{},
	}
	for _, s := range cfg.AllowedCIDRs {
		r.cidrs = append(r.cidrs, netip.MustParsePrefix(s).Masked())
	}
	if r.clock == nil {
		r.clock = SystemClock{}
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	r.queue = newWorkQueue(r.clock, cfg.RetryBase.D(), cfg.RetryMax.D())
	r.deletes = newTokenBucket(cfg.DeleteRate, cfg.DeleteBurst)
	m, err := newMetrics(opts.Registerer, r.ownedCount)
	if err != nil {
		return nil, err
	}
	r.m = m
	return r, nil
}

// Instance returns the name this registrar writes as istio.io/workloadController.
func (r *Registrar) Instance() string { return r.cfg.Instance }

// Connect registers one stream of a VM. It checks the request (group, identity, address policy,
// labels) and returns an error wrapping ErrGroupNotFound, ErrDenied, ErrAddressRefused,
// ErrReservedLabel or ErrInvalidNode without writing anything; otherwise it counts the stream
// and queues the write, which is retried until it succeeds or the VM disconnects. Wait on
// Session.Registered to hold the stream until the entry exists.
func (r *Registrar) Connect(ctx context.Context, req Request) (*Session, error) {
	w, err := r.admit(ctx, &req)
	if err != nil {
		r.m.errors.WithLabelValues(reasonOf(err)).Inc()
		return nil, err
	}
	r.mu.Lock()
	cur := r.workloads[w.key]
	if cur == nil {
		cur = w
		r.workloads[w.key] = w
	}
	cur.sessions++
	if !w.connectedAt.Before(cur.connectedAt) || cur == w {
		// The newest stream's metadata wins; a late connect of an older stream changes nothing.
		cur.node, cur.addr, cur.claimed, cur.source = w.node, w.addr, w.claimed, w.source
		cur.entryName, cur.connectedAt = w.entryName, w.connectedAt
		if cur.readyClosed { // this stream waits for the write of its own metadata
			cur.ready, cur.readyClosed = make(chan struct{}), false
		}
	}
	cur.disconnectedAt = time.Time{}
	cur.gen++
	ready := cur.ready
	r.mu.Unlock()
	r.m.registrations.Inc()
	r.queue.Add(workloadQueueKey(w.key))
	return &Session{r: r, key: w.key, ready: ready}, nil
}

// admit runs every check of a request and builds its workload record.
func (r *Registrar) admit(ctx context.Context, req *Request) (*workload, error) {
	group := req.Node.AutoRegisterGroup
	if group == "" {
		return nil, fmt.Errorf("%w: no AUTO_REGISTER_GROUP", ErrInvalidNode)
	}
	if req.Node.ID == "" {
		return nil, fmt.Errorf("%w: empty node id", ErrInvalidNode)
	}
	if !validNetwork(req.Node.Network) {
		return nil, fmt.Errorf("%w: NETWORK %q is not a valid label value", ErrInvalidNode, req.Node.Network)
	}
	if err := r.checkLabels(req.Node.Labels); err != nil {
		return nil, err
	}
	addr, claimed, err := r.chooseAddress(req)
	if err != nil {
		return nil, err
	}
	g, err := r.groups.Get(ctx, req.Identity.Namespace, group)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %s/%s", ErrGroupNotFound, req.Identity.Namespace, group)
	}
	if err != nil {
		return nil, fmt.Errorf("registrar: get group %s/%s: %w", req.Identity.Namespace, group, err)
	}
	if err := checkIdentity(req.Identity, &req.Node, g); err != nil {
		return nil, err
	}
	t := req.Time
	if t.IsZero() {
		t = r.clock.Now()
	}
	return &workload{
		key: workloadKey(g.Namespace, group, req.Identity, nodeKey(req.Node.ID)),
		ns:  g.Namespace, group: group, id: req.Identity, node: req.Node,
		addr: addr, claimed: claimed, source: req.Source,
		entryName:   EntryName(group, addr, req.Node.Network),
		connectedAt: t, state: statePending, ready: make(chan struct{}),
	}, nil
}

// Session is one registered stream. Close it when the stream ends.
type Session struct {
	r      *Registrar
	key    string
	ready  chan struct{}
	closed atomic.Bool
}

// Key identifies the session's VM, for SetHealth and Registrations.
func (s *Session) Key() string { return s.key }

// Registered is closed once the VM's entry has been written (by this registrar or, when another
// replica holds a newer connection, found owned by it).
func (s *Session) Registered() <-chan struct{} { return s.ready }

// Close ends the stream now. Only the first Close counts.
func (s *Session) Close() { s.CloseAt(s.r.clock.Now()) }

// CloseAt ends the stream at t. On the VM's last stream the entry is marked disconnected and
// deleted after the grace period unless the VM comes back.
func (s *Session) CloseAt(t time.Time) {
	if s.closed.Swap(true) {
		return
	}
	s.r.disconnect(s.key, t)
}

// SetHealth records a health report of the session's VM.
func (s *Session) SetHealth(healthy bool, message string) error {
	return s.r.SetHealth(s.key, healthy, message)
}

func (r *Registrar) disconnect(key string, t time.Time) {
	r.mu.Lock()
	w := r.workloads[key]
	if w == nil || w.sessions == 0 {
		r.mu.Unlock()
		return
	}
	w.sessions--
	if w.sessions == 0 {
		// A disconnect stamped before the last connect (clocks of different streams) is moved
		// to it: the entry never looks disconnected before it was connected.
		w.disconnectedAt = t
		if t.Before(w.connectedAt) {
			w.disconnectedAt = w.connectedAt
		}
		r.m.disconnects.Inc()
	}
	w.gen++
	r.mu.Unlock()
	r.queue.Add(workloadQueueKey(key))
}

// SetHealth records the health a VM reported (HealthInformation on its xDS stream); the entry's
// Healthy condition follows it. ErrNotFound if the VM has no live registration here.
func (r *Registrar) SetHealth(key string, healthy bool, message string) error {
	r.mu.Lock()
	w := r.workloads[key]
	if w == nil || w.sessions == 0 {
		r.mu.Unlock()
		return fmt.Errorf("%w: registration %s", ErrNotFound, key)
	}
	w.health = &healthReport{healthy: healthy, message: message, at: r.clock.Now()}
	w.gen++
	r.mu.Unlock()
	r.queue.Add(workloadQueueKey(key))
	return nil
}

// snapshot returns a copy of the workload record, or nil.
func (r *Registrar) snapshot(key string) *workload {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.workloads[key]
	if w == nil {
		return nil
	}
	c := *w
	return &c
}

// update applies f to the current record of w's key, if it still exists.
func (r *Registrar) update(w *workload, f func(cur *workload)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur := r.workloads[w.key]; cur != nil {
		f(cur)
	}
}

// forget drops w's record unless it changed since w was taken.
func (r *Registrar) forget(w *workload) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur := r.workloads[w.key]; cur != nil && cur.gen == w.gen && cur.sessions == 0 {
		delete(r.workloads, w.key)
	}
}

func (r *Registrar) ownedCount() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, w := range r.workloads {
		if w.owned && w.written != "" {
			n++
		}
	}
	return float64(n)
}

// keysWhere returns the keys of the workload records matching f, sorted.
func (r *Registrar) keysWhere(f func(w *workload) bool) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var keys []string
	for k, w := range r.workloads {
		if f(w) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
