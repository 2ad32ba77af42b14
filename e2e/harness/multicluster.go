package harness

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/peers"
)

// A multi-primary, multi-network mesh of two clusters (the map: Istio's multicluster docs and
// the team's multicluster notes): each cluster its own etcd, kube-apiserver (own service-account
// issuer and key) and istiod (own CLUSTER_ID and ports); one root of trust (a root CA made here,
// an intermediate per cluster given to its istiod as plug-in CA files through ROOT_CA_DIR); the
// istio-system namespace of each labelled with its network; each istiod reading the other
// cluster through a remote secret (inline kubeconfig with a token of a reader service account);
// and a network namespace per network.

// Labels and names Istio reads.
const (
	NetworkLabel       = "topology.istio.io/network"
	MultiClusterLabel  = "istio/multiCluster"
	TrustDomain        = "cluster.local"
	remoteReaderSA     = "istio-reader-service-account"
	remoteReaderRole   = "istio-reader-clusterrole-e2e"
	remoteSecretPrefix = "istio-remote-secret-"
)

// MultiOptions configure StartMultiCluster; the zero value is cluster-a/net-a and
// cluster-b/net-b.
type MultiOptions struct {
	IDs      [2]string // CLUSTER_ID of istiod A and B
	Networks [2]string // network of cluster A and B
	// IstiodEnv is added to both istiods' environment.
	IstiodEnv []string
}

// Member is one cluster of the pair with its network.
type Member struct {
	*Cluster
	ID      string   // CLUSTER_ID, and the data key of its remote secret in the other cluster
	Network string   // the label on its istio-system namespace
	Net     *Network // the network namespace standing for Network
	// Addr is an address of Net's lo that exists in no other network (10.1.0.10 for A,
	// 10.2.0.10 for B): backends of this network listen on it.
	Addr net.IP
	// CA is the intermediate this cluster's istiod signs with (ca-cert.pem), issued by the
	// shared root; CADir holds the four plug-in files (ROOT_CA_DIR).
	CA    *CA
	CADir string
}

// IstiodConn is how a workload inside this member's network reaches its istiod's 15012 (after
// Net.Forward(t, m.Istiod.SecureAddr), or from the host with Dial nil).
func (m *Member) IstiodConn(token string, roots *x509.CertPool) IstiodConn {
	return IstiodConn{Addr: m.Istiod.SecureAddr, ServerName: m.Istiod.SAN, Roots: roots, Token: token, ClusterID: m.ID}
}

// MultiCluster is two clusters under one root of trust, on two networks, each istiod reading
// the other cluster.
type MultiCluster struct {
	A, B    *Member
	Root    *CA    // the shared root (root-cert.pem of both istiods)
	RootPEM []byte // Root.CertPEM

	nsSeq sync.Mutex
	nsN   int
}

// Members is [A, B].
func (mc *MultiCluster) Members() []*Member { return []*Member{mc.A, mc.B} }

// Other is the member that is not m.
func (mc *MultiCluster) Other(m *Member) *Member {
	if m == mc.A {
		return mc.B
	}
	return mc.A
}

// RootPool is a pool holding only the shared root.
func (mc *MultiCluster) RootPool() *x509.CertPool { return mc.Root.Pool() }

// StartMultiCluster starts both clusters in parallel (etcd, apiserver, CRDs), writes the shared
// root and the intermediates, labels the networks, creates each cluster's remote secret in the
// other, starts both istiods in parallel and waits until each has synced the other cluster and
// serves the shared root. On error whatever was started is stopped.
func StartMultiCluster(ctx context.Context, l peers.Layout, o MultiOptions) (mc *MultiCluster, err error) {
	if o.IDs == [2]string{} {
		o.IDs = [2]string{"cluster-a", "cluster-b"}
	}
	if o.Networks == [2]string{} {
		o.Networks = [2]string{"net-a", "net-b"}
	}
	mc = &MultiCluster{
		A: &Member{ID: o.IDs[0], Network: o.Networks[0], Addr: net.IPv4(10, 1, 0, 10)},
		B: &Member{ID: o.IDs[1], Network: o.Networks[1], Addr: net.IPv4(10, 2, 0, 10)},
	}
	defer func() {
		if err != nil {
			mc.PrintLogTails(os.Stderr, 40)
			mc.Stop()
			mc = nil
		}
	}()
	if mc.Root, err = NewCA("ewgate e2e mesh root"); err != nil {
		return mc, err
	}
	mc.RootPEM = mc.Root.CertPEM

	// 1. Both control-plane stores and both networks, in parallel.
	if err = mc.each(func(m *Member) error {
		var err error
		if m.Net, err = StartNetwork(m.Network); err != nil {
			return err
		}
		if err = m.Net.AddAddr(m.Addr); err != nil {
			return err
		}
		m.Cluster, err = StartCluster(ctx, l, Options{})
		return err
	}); err != nil {
		return mc, err
	}
	// 2. Plug-in CA files, the network label, the reader identity for the other cluster.
	if err = mc.each(func(m *Member) error {
		if err := mc.writeCACerts(m); err != nil {
			return err
		}
		if err := m.API.CreateNamespace(ctx, IstioNamespace, map[string]string{NetworkLabel: m.Network}); err != nil {
			return err
		}
		return createRemoteReader(ctx, m.API)
	}); err != nil {
		return mc, err
	}
	// 3. Each cluster's remote secret in the other.
	if err = mc.each(func(m *Member) error {
		return createRemoteSecret(ctx, mc.Other(m).API, m.ID, m.API)
	}); err != nil {
		return mc, err
	}
	// 4. Both istiods, then each must have synced the other and serve the shared root.
	if err = mc.each(func(m *Member) error {
		env := append([]string{"ROOT_CA_DIR=" + m.CADir}, o.IstiodEnv...)
		var err error
		m.Istiod, err = StartIstiod(ctx, l.PilotDiscovery(), m.API, IstiodOptions{ClusterID: m.ID, Env: env})
		return err
	}); err != nil {
		return mc, err
	}
	err = mc.each(func(m *Member) error {
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		if err := m.WaitRemoteSynced(wctx, mc.Other(m).ID); err != nil {
			return err
		}
		return mc.checkRoot(wctx, m)
	})
	return mc, err
}

// each runs fn for A and B in parallel and returns the first error.
func (mc *MultiCluster) each(fn func(*Member) error) error {
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, m := range mc.Members() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(m); err != nil {
				errs[i] = fmt.Errorf("%s: %w", m.ID, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// writeCACerts issues m's intermediate from the root and writes Istio's plug-in CA files
// (security/pkg/pki/ca: ca-cert.pem, ca-key.pem, cert-chain.pem = intermediate + root,
// root-cert.pem). With any of them missing istiod would silently make a root of its own.
func (mc *MultiCluster) writeCACerts(m *Member) error {
	ca, err := mc.Root.NewIntermediate("ewgate e2e intermediate " + m.ID)
	if err != nil {
		return err
	}
	m.CA = ca
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	m.CADir = filepath.Join(TempRoot(), "cacerts-"+m.ID)
	if err := os.MkdirAll(m.CADir, 0o700); err != nil {
		return fmt.Errorf("harness: cacerts: %w", err)
	}
	files := map[string][]byte{
		"ca-cert.pem":    ca.CertPEM,
		"ca-key.pem":     keyPEM,
		"cert-chain.pem": append(append([]byte{}, ca.CertPEM...), mc.RootPEM...),
		"root-cert.pem":  mc.RootPEM,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(m.CADir, name), b, 0o600); err != nil {
			return fmt.Errorf("harness: cacerts: %w", err)
		}
	}
	return nil
}

// checkRoot: the root istiod distributes (istio-ca-root-cert in istio-system) is the shared
// root, not one istiod made itself.
func (mc *MultiCluster) checkRoot(ctx context.Context, m *Member) error {
	got, err := m.Istiod.RootCert(ctx, m.API, IstioNamespace)
	if err != nil {
		return err
	}
	if !SamePEMCerts(got, mc.RootPEM) {
		return fmt.Errorf("harness: istiod %s distributes a root that is not the shared one (plug-in CA files in %s not used?)", m.ID, m.CADir)
	}
	return nil
}

// Namespace creates the same fresh namespace <prefix>-<n> in both clusters (Istio's namespace
// sameness: a service is one service across clusters when its namespace and name match).
func (mc *MultiCluster) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	mc.nsSeq.Lock()
	mc.nsN++
	name := fmt.Sprintf("%s-%d", prefix, mc.nsN)
	mc.nsSeq.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range mc.Members() {
		if err := m.API.CreateNamespace(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

// Procs are every running peer of the pair.
func (mc *MultiCluster) Procs() []*Proc {
	var ps []*Proc
	for _, m := range mc.Members() {
		if m.Cluster != nil {
			ps = append(ps, m.Cluster.Procs()...)
		}
	}
	return ps
}

// LogOnFailure prints what the pair's peers logged during t if t fails.
func (mc *MultiCluster) LogOnFailure(t testing.TB) {
	t.Helper()
	LogOnFailure(t, mc.Procs()...)
}

// PrintLogTails writes the last n lines of each peer's log to w.
func (mc *MultiCluster) PrintLogTails(w io.Writer, n int) {
	for _, m := range mc.Members() {
		if m.Cluster == nil {
			continue
		}
		for _, p := range m.Cluster.Procs() {
			fmt.Fprintf(w, "---- %s %s log (last %d lines) ----\n%s\n", m.ID, p.Name, n, p.Tail(n))
		}
	}
}

// Stop stops both clusters (each istiod, apiserver, etcd in that order) in parallel, then the
// networks. Safe on a partly started pair and more than once.
func (mc *MultiCluster) Stop() {
	if mc == nil {
		return
	}
	_ = mc.each(func(m *Member) error {
		if m.Cluster != nil {
			m.Cluster.Stop()
		}
		return m.Net.Stop()
	})
}

// MainMulti is the whole TestMain of a package whose tests share one MultiCluster (as Main is for
// one cluster): it serves re-executed children, fetches the peers if needed, starts the pair into
// *shared, runs the tests, prints the peers' log tails if anything failed, and stops everything
// (also on SIGINT/SIGTERM).
func MainMulti(m *testing.M, o MultiOptions, shared **MultiCluster) int {
	return runMain(m, "two clusters", func(ctx context.Context, l peers.Layout) (peerSet, string, error) {
		mc, err := StartMultiCluster(ctx, l, o)
		if err != nil {
			return nil, "", err
		}
		*shared = mc
		return mc, fmt.Sprintf("%s %s, %s %s", mc.A.ID, mc.A.API.URL, mc.B.ID, mc.B.API.URL), nil
	})
}

// locatePeers finds the peers' cache and fills it if something is missing.
func locatePeers() (peers.Layout, error) {
	l, err := peers.Locate()
	if err != nil {
		return l, err
	}
	if err := peers.Check(l); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v: fetching the peers first\n", err)
		logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
		if err := peers.Ensure(context.Background(), l, logf); err != nil {
			return l, err
		}
	}
	return l, nil
}
