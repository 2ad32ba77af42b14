package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// TestBuiltinCACertificatesAuthenticateVMs: standalone, with no authn.client_certs configured,
// a VM that got its certificate from the built-in CA (through 15012, with its token) renews
// with that certificate once its token has expired, and with the certificate alone: ewgate
// trusts its own CA for the builtin upstream's cluster. Before, the operator had to name the
// CA's root-cert.pem in trust_bundles, which vm-config and serve refuse while the CA does not
// exist yet, and a VM fell out of the mesh when its token expired.
func TestBuiltinCACertificatesAuthenticateVMs(t *testing.T) {
	s := newVMSetup(t)
	g, logs := s.start(t)
	t.Cleanup(func() { g.Shutdown(context.Background()) })
	control := listening(t, logs, "control")
	testkit.Eventually(t, "ready", func() bool { return get(g.handler(), "/healthz/ready") == 200 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The VM's first certificate, with its token.
	cert := csrSign(t, ctx, s, control, nil, s.token(t))
	spiffe := "spiffe://cluster.local/ns/vms/sa/web"
	if len(cert.Leaf.URIs) != 1 || cert.Leaf.URIs[0].String() != spiffe {
		t.Fatalf("certificate URIs %v, want [%s]", cert.Leaf.URIs, spiffe)
	}
	now := time.Now()
	expired := s.issuer.Token(t, "vms", "web", testkit.Claim("exp", now.Add(-time.Hour).Unix()),
		testkit.Claim("iat", now.Add(-2*time.Hour).Unix()), testkit.Claim("nbf", now.Add(-2*time.Hour).Unix()))
	for name, tok := range map[string]string{"expired token": expired, "no token": ""} {
		renewed := csrSign(t, ctx, s, control, &cert, tok)
		if renewed.Leaf.URIs[0].String() != spiffe || renewed.Leaf.SerialNumber.Cmp(cert.Leaf.SerialNumber) == 0 {
			t.Errorf("%s: renewed certificate %v serial %v", name, renewed.Leaf.URIs, renewed.Leaf.SerialNumber)
		}
	}
}

// csrSign asks the built-in CA through 15012 for a certificate, presenting cert (if not nil)
// and tok (if not empty), and returns it with its key.
func csrSign(t *testing.T, ctx context.Context, s *vmSetup, control string, cert *tls.Certificate, tok string) tls.Certificate {
	t.Helper()
	tc := &tls.Config{RootCAs: s.roots, ServerName: serverName}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	cc, err := grpc.NewClient(control, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	kv := []string{"ClusterID", "cluster1"}
	if tok != "" {
		kv = append(kv, "authorization", "Bearer "+tok)
	}
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(cc).CreateCertificate(metadata.AppendToOutgoingContext(ctx, kv...),
		&securityv1alpha1.IstioCertificateRequest{Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), ValidityDuration: 3600})
	if err != nil {
		t.Fatalf("CreateCertificate (certificate %v, token %v): %v", cert != nil, tok != "", err)
	}
	blk, _ := pem.Decode([]byte(strings.Join(resp.CertChain, "")))
	if blk == nil {
		t.Fatal("no certificate in the response")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{blk.Bytes}, PrivateKey: key, Leaf: leaf}
}
