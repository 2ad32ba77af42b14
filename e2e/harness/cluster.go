// Package harness starts the real peers of the e2e suite on loopback (etcd, kube-apiserver,
// istiod, pilot-agent as a VM, a grpc-go xDS client) and offers the helpers the scenarios use.
//
// Every peer runs in its own process group with its own free ports on 127.0.0.1, its files in a
// directory under one temp root, its output in a log file; it is stopped by PID (SIGTERM, then
// SIGKILL) and its directory removed. Children get SIGKILL if the test process dies (Pdeathsig),
// so no peer outlives a test binary killed by `go test -timeout`.
//
// A test binary shares one cluster across its tests:
//
//	var cluster *harness.Cluster
//
//	func TestMain(m *testing.M) {
//		os.Exit(harness.Main(m, harness.Options{Istiod: true}, &cluster))
//	}
//
//	func TestX(t *testing.T) {
//		cluster.LogOnFailure(t)
//		ns := cluster.Namespace(t, "x")
//		...
//	}
//
// The peers come from the cache filled by e2e/cmd/peers (package peers); Main fills it itself
// when something is missing, so `go test ./...` in e2e works on a fresh machine too (slowly).
package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/peers"
)

// Options say which peers a cluster has.
type Options struct {
	Istiod        bool // start istiod as well as etcd and the apiserver
	IstiodOptions IstiodOptions
}

// Cluster is etcd + kube-apiserver (+ istiod), with the Istio CRDs applied and anonymous OIDC
// discovery allowed.
type Cluster struct {
	Peers  peers.Layout
	Etcd   *Etcd
	API    *APIServer
	Istiod *Istiod // nil without Options.Istiod
	CRDs   []string

	nsSeq atomic.Int64
}

// StartCluster starts the peers and waits until each is ready. On error, whatever was started
// is stopped.
func StartCluster(ctx context.Context, l peers.Layout, o Options) (c *Cluster, err error) {
	kubectl, err := l.Kubectl()
	if err != nil {
		return nil, err
	}
	c = &Cluster{Peers: l}
	defer func() {
		if err != nil {
			c.PrintLogTails(os.Stderr, 40)
			c.Stop()
			c = nil
		}
	}()
	if c.Etcd, err = StartEtcd(ctx, l.Etcd()); err != nil {
		return c, err
	}
	if c.API, err = StartAPIServer(ctx, l.APIServer(), kubectl, c.Etcd.ClientURL); err != nil {
		return c, err
	}
	if c.CRDs, err = c.API.ApplyCRDs(ctx, l.IstioCRDs()); err != nil {
		return c, err
	}
	if err = c.API.AllowAnonymousOIDCDiscovery(ctx); err != nil {
		return c, err
	}
	if o.Istiod {
		if c.Istiod, err = StartIstiod(ctx, l.PilotDiscovery(), c.API, o.IstiodOptions); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Stop stops istiod, then the apiserver, then etcd (an apiserver without etcd ignores SIGTERM
// for 30 s+). It is safe on a partly started cluster and more than once.
func (c *Cluster) Stop() {
	if c == nil {
		return
	}
	if c.Istiod != nil && c.Istiod.Proc != nil {
		_ = c.Istiod.Stop()
	}
	if c.API != nil && c.API.Proc != nil {
		_ = c.API.Stop()
	}
	if c.Etcd != nil && c.Etcd.Proc != nil {
		_ = c.Etcd.Proc.Stop(10 * time.Second)
	}
}

// Procs are the cluster's running peers.
func (c *Cluster) Procs() []*Proc {
	var ps []*Proc
	if c.Etcd != nil && c.Etcd.Proc != nil {
		ps = append(ps, c.Etcd.Proc)
	}
	if c.API != nil && c.API.Proc != nil {
		ps = append(ps, c.API.Proc)
	}
	if c.Istiod != nil && c.Istiod.Proc != nil {
		ps = append(ps, c.Istiod.Proc)
	}
	return ps
}

// LogOnFailure prints what the shared peers logged during t if t fails.
func (c *Cluster) LogOnFailure(t testing.TB) {
	t.Helper()
	LogOnFailure(t, c.Procs()...)
}

// PrintLogTails writes the last n lines of each peer's log to w.
func (c *Cluster) PrintLogTails(w io.Writer, n int) {
	for _, p := range c.Procs() {
		fmt.Fprintf(w, "---- %s log (last %d lines) ----\n%s\n", p.Name, n, p.Tail(n))
	}
}

// Namespace creates a fresh namespace for t, named <prefix>-<n> (namespaces are never deleted:
// without kube-controller-manager they would stay Terminating).
func (c *Cluster) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", prefix, c.nsSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.API.CreateNamespace(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	return name
}

// Main is the whole TestMain of a scenario package: it serves re-executed xDS clients and
// namespace launchers (namespaces.go), fetches the peers if the cache is incomplete, starts one
// shared cluster into *shared, runs the tests, prints the peers' log tails if anything failed,
// and stops everything (also on SIGINT/SIGTERM).
func Main(m *testing.M, o Options, shared **Cluster) int {
	return runMain(m, "cluster", func(ctx context.Context, l peers.Layout) (peerSet, string, error) {
		c, err := StartCluster(ctx, l, o)
		if err != nil {
			return nil, "", err
		}
		*shared = c
		return c, fmt.Sprintf("apiserver %s, istiod %v", c.API.URL, c.Istiod != nil), nil
	})
}

// runMain is Main's and MainMulti's common part: it serves re-executed children, removes the
// temp roots of dead runs, finds (and fetches if needed) the peers, starts the package's shared
// peers with start (what names them in messages), and runs the tests with them (runTests).
func runMain(m *testing.M, what string, start func(context.Context, peers.Layout) (peerSet, string, error)) int {
	RunXDSClientIfRequested()
	runNSChildIfRequested()
	RemoveStaleTempRoots()
	defer RemoveTempRoot()

	l, err := locatePeers()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t0 := time.Now()
	ps, desc, err := start(ctx, l)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %s: %v\n", what, err)
		StopAll()
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: %s up in %s (%s)\n", what, time.Since(t0).Round(10*time.Millisecond), desc)
	return runTests(m, ps)
}

// peerSet is what runTests stops: the peers a package's tests share.
type peerSet interface {
	Stop()
	PrintLogTails(w io.Writer, n int)
}

// runTests runs the package's tests with ps started, prints the peers' log tails if anything
// failed, and stops ps and every other peer, also on SIGINT/SIGTERM.
func runTests(m *testing.M, ps peerSet) int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		if s, ok := <-sigs; ok {
			fmt.Fprintf(os.Stderr, "e2e: %v: stopping the peers\n", s)
			ps.Stop()
			StopAll()
			RemoveTempRoot()
			os.Exit(130)
		}
	}()
	code := m.Run()
	signal.Stop(sigs)
	if code != 0 {
		ps.PrintLogTails(os.Stderr, 40)
	}
	ps.Stop()
	StopAll()
	return code
}

// Context is a context for one step of a test, bounded by d and by the test's deadline.
func Context(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	if tt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if dl, ok := tt.Deadline(); ok {
			var c2 context.CancelFunc
			ctx, c2 = context.WithDeadline(ctx, dl.Add(-5*time.Second))
			t.Cleanup(c2)
		}
	}
	t.Cleanup(cancel)
	return ctx
}

// ContainsAll reports the first of subs missing from s.
func ContainsAll(s string, subs ...string) error {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return fmt.Errorf("missing %q", sub)
		}
	}
	return nil
}
