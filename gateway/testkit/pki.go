package testkit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// Cert is a certificate and its private key. A CA's Cert signs others (Issue, Server, Client,
// Intermediate); a leaf's is served or presented (TLS, WriteFiles).
type Cert struct {
	X509 *x509.Certificate
	Key  crypto.Signer
	// parent is the issuer (nil for a self-signed certificate); TLS sends the chain up to, not
	// including, the root.
	parent *Cert
}

// CertOption changes a certificate's template before it is signed.
type CertOption func(*x509.Certificate)

// Valid sets the validity window (the default is from an hour ago to 24 hours ahead, real time).
func Valid(notBefore, notAfter time.Time) CertOption {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// Organization sets the subject's organization.
func Organization(o ...string) CertOption {
	return func(c *x509.Certificate) { c.Subject.Organization = o }
}

var serial atomic.Int64

// NewKey returns a fresh ECDSA P-256 key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testkit: generate a P-256 key: %v", err)
	}
	return key
}

// Issue signs tmpl for a fresh P-256 key with parent's key, or self-signed when parent is nil.
// It sets a serial number unique in the test binary and, where tmpl leaves them zero, the
// default validity window.
func Issue(t testing.TB, tmpl *x509.Certificate, parent *Cert) *Cert {
	t.Helper()
	key := NewKey(t)
	tmpl.SerialNumber = big.NewInt(serial.Add(1))
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	signer, parentCert := crypto.Signer(key), tmpl
	if parent != nil {
		signer, parentCert = parent.Key, parent.X509
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), signer)
	if err != nil {
		t.Fatalf("testkit: create certificate %q: %v", tmpl.Subject.CommonName, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testkit: parse certificate %q: %v", tmpl.Subject.CommonName, err)
	}
	return &Cert{X509: c, Key: key, parent: parent}
}

func caTemplate(name string, opts []CertOption) *x509.Certificate {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	for _, o := range opts {
		o(tmpl)
	}
	return tmpl
}

// NewCA returns a self-signed CA named name.
func NewCA(t testing.TB, name string, opts ...CertOption) *Cert {
	t.Helper()
	return Issue(t, caTemplate(name, opts), nil)
}

// Intermediate returns a CA named name signed by c.
func (c *Cert) Intermediate(t testing.TB, name string, opts ...CertOption) *Cert {
	t.Helper()
	return Issue(t, caTemplate(name, opts), c)
}

// Server issues a serving certificate for names: each an IP address (an IP SAN) or a DNS name;
// the first is also the subject's common name.
func (c *Cert) Server(t testing.TB, names ...string) *Cert {
	t.Helper()
	tmpl := &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if len(names) > 0 {
		tmpl.Subject.CommonName = names[0]
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	return Issue(t, tmpl, c)
}

// Client issues a workload certificate as istiod does: no subject, the URI SANs given (SPIFFE
// IDs such as spiffe://cluster.local/ns/vm-ns/sa/web), client and server auth.
func (c *Cert) Client(t testing.TB, uris []string, opts ...CertOption) *Cert {
	t.Helper()
	tmpl := &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatalf("testkit: URI SAN %q: %v", u, err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	for _, o := range opts {
		o(tmpl)
	}
	return Issue(t, tmpl, c)
}

// TLS returns the certificate for a tls.Config: the leaf, then its issuers up to, not
// including, the self-signed root, with Leaf set.
func (c *Cert) TLS() tls.Certificate {
	out := tls.Certificate{PrivateKey: c.Key, Leaf: c.X509}
	for x := c; x != nil && (x == c || x.parent != nil); x = x.parent {
		out.Certificate = append(out.Certificate, x.X509.Raw)
	}
	return out
}

// Pool returns a pool holding c alone (c as a trust root).
func (c *Cert) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.X509)
	return p
}

// PEM returns c's certificate in PEM.
func (c *Cert) PEM() []byte { return PEM(c.X509) }

// PEM encodes certificates one after another, as a bundle file holds them.
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM returns c's private key as PKCS #8 PEM.
func (c *Cert) KeyPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatalf("testkit: marshal key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteFiles writes c's chain (as TLS sends it) and key into dir as prefix.crt and prefix.key,
// and returns their paths.
func (c *Cert) WriteFiles(t testing.TB, dir, prefix string) (certFile, keyFile string) {
	t.Helper()
	var chain []byte
	for _, der := range c.TLS().Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return WriteFile(t, dir, prefix+".crt", chain), WriteFile(t, dir, prefix+".key", c.KeyPEM(t))
}

// WriteFile writes data to dir/name with mode 0600 and returns the path.
func WriteFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatalf("testkit: %v", err)
	}
	return p
}

// CSR returns a PEM certificate request for a fresh P-256 key asking for the URI SAN uri (a
// SPIFFE ID), as pilot-agent sends it to a CA, and the key.
func CSR(t testing.TB, uri string) (string, *ecdsa.PrivateKey) {
	t.Helper()
	key := NewKey(t)
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatalf("testkit: URI SAN %q: %v", uri, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatalf("testkit: create CSR: %v", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}
