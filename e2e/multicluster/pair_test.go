package multicluster

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ewgate/ewgate/e2e/harness"
)

// The pair is what a multi-primary, multi-network mesh needs and nothing is shared by accident:
// two apiservers with their own issuers and keys, two istiods with their own cluster IDs and
// intermediates of one root, each reading the other cluster through its remote secret, each
// cluster's istio-system labelled with its network.
func TestPairTwoClustersOneRoot(t *testing.T) {
	mc.LogOnFailure(t)
	ctx := harness.Context(t, 2*time.Minute)
	a, b := mc.A, mc.B
	ns := mc.Namespace(t, "pair")

	if a.API.Issuer == b.API.Issuer {
		t.Fatalf("both apiservers issue tokens as %s", a.API.Issuer)
	}
	if a.ID == b.ID || a.Istiod.ClusterID != a.ID || b.Istiod.ClusterID != b.ID {
		t.Fatalf("cluster IDs: A %q/%q, B %q/%q", a.ID, a.Istiod.ClusterID, b.ID, b.Istiod.ClusterID)
	}
	for _, m := range mc.Members() {
		other := mc.Other(m)
		// A token of one apiserver means nothing to the other: own signing keys.
		if _, err := m.API.CreateServiceAccount(ctx, ns, "probe"); err != nil {
			t.Fatal(err)
		}
		if _, err := other.API.CreateServiceAccount(ctx, ns, "probe"); err != nil {
			t.Fatal(err)
		}
		tok, err := m.API.Token(ctx, ns, "probe", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := m.API.ReviewToken(ctx, tok); err != nil || !st.Authenticated {
			t.Fatalf("%s: own token not authenticated: %v %+v", m.ID, err, st)
		}
		if st, err := other.API.ReviewToken(ctx, tok); err != nil || st.Authenticated {
			t.Fatalf("%s's token authenticated by %s's apiserver: %v %+v", m.ID, other.ID, err, st)
		}

		// The network label istiod reads for the whole cluster.
		sys, err := m.API.Kube.CoreV1().Namespaces().Get(ctx, harness.IstioNamespace, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := sys.Labels[harness.NetworkLabel]; got != m.Network {
			t.Fatalf("%s: istio-system %s=%q, want %q", m.ID, harness.NetworkLabel, got, m.Network)
		}

		// Each istiod reads the other cluster from the remote secret, synced.
		cs, err := m.Istiod.RemoteClusters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("istiod %s /debug/clusterz: %+v", m.ID, cs)
		if !hasSynced(cs, other.ID, "istio-remote-secret-"+other.ID) {
			t.Fatalf("istiod %s /debug/clusterz does not list %s synced from its remote secret: %+v", m.ID, other.ID, cs)
		}

		// The root istiod writes into a new namespace is the shared one.
		root, err := m.Istiod.RootCert(ctx, m.API, ns)
		if err != nil {
			t.Fatal(err)
		}
		if !harness.SamePEMCerts(root, mc.RootPEM) {
			t.Fatalf("istiod %s distributes another root in %s:\n%s", m.ID, ns, root)
		}
	}

	// Each CA issues under its own intermediate; both verify to the shared root, with the SPIFFE
	// ID of the token's service account in the shared trust domain.
	var issuers []string
	for _, m := range mc.Members() {
		tok, err := m.API.IstioToken(ctx, ns, "probe")
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("spiffe://%s/ns/%s/sa/probe", harness.TrustDomain, ns)
		wc, err := harness.RequestWorkloadCert(ctx, m.IstiodConn(tok, mc.RootPool()), want, time.Hour)
		if err != nil {
			t.Fatalf("%s: %v", m.ID, err)
		}
		if wc.SPIFFEID() != want {
			t.Fatalf("%s issued %q, want %q", m.ID, wc.SPIFFEID(), want)
		}
		if !harness.SamePEMCerts(wc.RootPEM, mc.RootPEM) {
			t.Fatalf("%s's CA returned another root last", m.ID)
		}
		if err := verifyChain(wc.TLS.Certificate, mc.RootPool()); err != nil {
			t.Fatalf("%s's workload certificate does not verify to the shared root: %v", m.ID, err)
		}
		if wc.Leaf.Issuer.CommonName != m.CA.Cert.Subject.CommonName {
			t.Fatalf("%s's workload certificate issued by %q, want its intermediate %q", m.ID, wc.Leaf.Issuer.CommonName, m.CA.Cert.Subject.CommonName)
		}
		issuers = append(issuers, wc.Leaf.Issuer.CommonName)
	}
	if issuers[0] == issuers[1] {
		t.Fatalf("both istiods sign with %q", issuers[0])
	}
}

// The two networks are apart: a backend on net-b's address answers inside net-b and cannot be
// dialled from net-a.
func TestPairNetworksApart(t *testing.T) {
	ctx := harness.Context(t, 30*time.Second)
	addr := net.JoinHostPort(mc.B.Addr.String(), "7001")
	ln, err := mc.B.Net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for i := 0; i < 10; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "net-b\n")
			c.Close()
		}
	}()
	c, err := mc.B.Net.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("inside net-b: %v", err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "net-b\n" {
		t.Fatalf("inside net-b read %q", got)
	}
	c, dialErr := mc.A.Net.DialContext(ctx, "tcp", addr)
	if dialErr == nil {
		c.Close()
		t.Fatalf("net-a reached %s of net-b directly", addr)
	}
	if !errors.Is(dialErr, syscall.ENETUNREACH) {
		t.Fatalf("net-a dialling %s: %v, want network unreachable", addr, dialErr)
	}
	addrs, err := mc.A.Net.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("net-a addresses %v; dial %s from net-a: %v", addrs, addr, dialErr)
}

// hasSynced: istiod names the secret <namespace>/<name>.
func hasSynced(cs []harness.RemoteCluster, id, secret string) bool {
	for _, c := range cs {
		if c.ID == id && c.SyncStatus == "synced" && c.SecretName == harness.IstioNamespace+"/"+secret {
			return true
		}
	}
	return false
}

func verifyChain(chain [][]byte, roots *x509.CertPool) error {
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, d := range chain[1:] {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return err
		}
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}
