package authn

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

func caTmpl(name string, notBefore time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"cluster.local"}, CommonName: name},
		NotBefore:             notBefore.Add(-time.Hour),
		NotAfter:              notBefore.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

// leafTmpl is a workload certificate as istiod issues it: no subject, URI
// SAN, client and server auth, 24 h.
func leafTmpl(now time.Time, uris ...string) *x509.Certificate {
	tmpl := &x509.Certificate{
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			panic(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	return tmpl
}

const meshID = "spiffe://cluster.local/ns/vm-ns/sa/vm-sa"

func TestVerifyCert(t *testing.T) {
	clock := newClock()
	now := clock.Now()
	root := testkit.Issue(t, caTmpl("root", now), nil)
	inter := testkit.Issue(t, caTmpl("intermediate", now), root)
	otherRoot := testkit.Issue(t, caTmpl("other root", now), nil)
	otherTDRoot := testkit.Issue(t, caTmpl("other td root", now), nil)

	cfg := Config{ClientCerts: ClientCertConfig{TrustBundles: []TrustBundleConfig{
		{TrustDomain: "cluster.local", CAFile: writeFile(t, "root.pem", testkit.PEM(root.X509)), Cluster: "cluster-a"},
		{TrustDomain: "other.td", CAFile: writeFile(t, "other.pem", testkit.PEM(otherTDRoot.X509))},
	}}}
	v, err := New(context.Background(), cfg, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()

	leaf := testkit.Issue(t, leafTmpl(now, meshID), inter)
	id, err := v.VerifyCert([]*x509.Certificate{leaf.X509, inter.X509})
	if err != nil {
		t.Fatalf("good chain: %v", err)
	}
	want := Identity{Cluster: "cluster-a", Namespace: "vm-ns", ServiceAccount: "vm-sa", TrustDomain: "cluster.local",
		SPIFFEID: meshID, ExpiresAt: leaf.X509.NotAfter, Source: SourceCert}
	if *id != want {
		t.Fatalf("identity\n got %+v\nwant %+v", *id, want)
	}
	// Directly under the root also works.
	if _, err := v.VerifyCert([]*x509.Certificate{testkit.Issue(t, leafTmpl(now, meshID), root).X509}); err != nil {
		t.Fatalf("leaf under root: %v", err)
	}

	serverOnly := leafTmpl(now, meshID)
	serverOnly.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	notYet := leafTmpl(now.Add(time.Hour), meshID)
	cases := []struct {
		name  string
		chain []*x509.Certificate
		later time.Duration
		want  error
	}{
		{"no certificate", nil, 0, ErrUntrustedCert},
		{"untrusted root", []*x509.Certificate{testkit.Issue(t, leafTmpl(now, meshID), otherRoot).X509}, 0, ErrUntrustedCert},
		{"intermediate missing", []*x509.Certificate{leaf.X509}, 0, ErrUntrustedCert},
		{"self-signed leaf", []*x509.Certificate{testkit.Issue(t, leafTmpl(now, meshID), nil).X509}, 0, ErrUntrustedCert},
		{"root of another trust domain", []*x509.Certificate{testkit.Issue(t, leafTmpl(now, "spiffe://other.td/ns/vm-ns/sa/vm-sa"), root).X509}, 0, ErrUntrustedCert},
		{"server auth only", []*x509.Certificate{testkit.Issue(t, serverOnly, root).X509}, 0, ErrUntrustedCert},
		{"expired", []*x509.Certificate{leaf.X509, inter.X509}, 25 * time.Hour, ErrExpired},
		{"not yet valid", []*x509.Certificate{testkit.Issue(t, notYet, root).X509}, 0, ErrNotYetValid},
		{"wrong trust domain", []*x509.Certificate{testkit.Issue(t, leafTmpl(now, "spiffe://evil.example/ns/vm-ns/sa/vm-sa"), root).X509}, 0, ErrBadTrustDomain},
		{"two SPIFFE URIs", []*x509.Certificate{testkit.Issue(t, leafTmpl(now, meshID, "spiffe://cluster.local/ns/x/sa/y"), root).X509}, 0, ErrBadSubject},
		{"no URI SAN", []*x509.Certificate{testkit.Issue(t, leafTmpl(now), root).X509}, 0, ErrBadSubject},
		{"SPIFFE ID not ns/sa", []*x509.Certificate{testkit.Issue(t, leafTmpl(now, "spiffe://cluster.local/workload/vm"), root).X509}, 0, ErrBadSubject},
		{"SPIFFE ID with extra path", []*x509.Certificate{testkit.Issue(t, leafTmpl(now, meshID+"/x"), root).X509}, 0, ErrBadSubject},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock.Advance(tc.later)
			defer clock.Advance(-tc.later)
			id, err := v.VerifyCert(tc.chain)
			if !errors.Is(err, tc.want) || id != nil {
				t.Fatalf("got %v (reason %s), %+v; want %v", err, Reason(err), id, tc.want)
			}
		})
	}
}

// Through a real TLS handshake: the server requests a certificate and
// leaves verification to VerifyConnectionState.
func TestVerifyConnectionState(t *testing.T) {
	now := time.Now() // the handshake itself checks the server cert at real time
	clock := testkit.NewClock(now)
	root := testkit.Issue(t, caTmpl("root", now), nil)
	leaf := testkit.Issue(t, leafTmpl(now, meshID), root)
	server := testkit.Issue(t, &x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"istiod.istio-system.svc"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, root)

	v, err := New(context.Background(), Config{ClientCerts: ClientCertConfig{TrustBundles: []TrustBundleConfig{
		{TrustDomain: "cluster.local", CAFile: writeFile(t, "root.pem", testkit.PEM(root.X509)), Cluster: "c1"}}}},
		Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.ClientCAs() == nil {
		t.Fatal("no client CA pool")
	}

	c1, c2 := net.Pipe()
	srvConn := tls.Server(c1, &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{server.X509.Raw}, PrivateKey: server.Key}},
		ClientAuth:   tls.RequireAnyClientCert,
	})
	cliConn := tls.Client(c2, &tls.Config{
		ServerName:   "istiod.istio-system.svc",
		RootCAs:      v.ClientCAs(),
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.X509.Raw}, PrivateKey: leaf.Key.(*ecdsa.PrivateKey)}},
	})
	done := make(chan error, 1)
	go func() { done <- cliConn.Handshake() }()
	if err := srvConn.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	cs := srvConn.ConnectionState()
	id, err := v.VerifyConnectionState(&cs)
	if err != nil || id.SPIFFEID != meshID || id.Cluster != "c1" {
		t.Fatalf("identity %+v, err %v", id, err)
	}
	// Close the pipe ends, not the TLS conns: close_notify on an unread
	// synchronous pipe would block until its 5 s write deadline.
	_ = c1.Close()
	_ = c2.Close()
}
