package bench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// SNI is the Istio AUTO_PASSTHROUGH name every proxy routes to the backend.
const SNI = "outbound_.8443_._.bench.default.svc.cluster.local"

// pki is the run's throwaway CA and the backend's certificate (ECDSA P-256, as Istio's CA
// issues by default): made at every run, never written outside the work directory.
type pki struct {
	roots    *x509.CertPool
	server   tls.Certificate
	certFile string // backend certificate chain, PEM
	keyFile  string // backend key, PEM
}

func newPKI(dir string) (*pki, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ewgate bench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "bench backend"},
		DNSNames:     []string{SNI},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	p := &pki{roots: x509.NewCertPool(), certFile: filepath.Join(dir, "backend.crt"), keyFile: filepath.Join(dir, "backend.key")}
	p.roots.AddCert(ca)
	if p.server, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.certFile, certPEM, 0o600); err != nil {
		return nil, fmt.Errorf("bench: write backend cert: %w", err)
	}
	if err := os.WriteFile(p.keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("bench: write backend key: %w", err)
	}
	return p, nil
}

// clientConfig is a sidecar-like client: SNI, ALPN istio, X25519 only (what Envoy offers
// first), no session cache, so every connection is a full handshake.
func (p *pki) clientConfig() *tls.Config {
	return &tls.Config{
		ServerName:       SNI,
		NextProtos:       []string{"istio"},
		RootCAs:          p.roots,
		CurvePreferences: []tls.CurveID{tls.X25519},
		MinVersion:       tls.VersionTLS13,
	}
}

// ServerConfig is the backend's TLS configuration.
func ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{cert},
		NextProtos:             []string{"istio"},
		CurvePreferences:       []tls.CurveID{tls.X25519},
		MinVersion:             tls.VersionTLS13,
		SessionTicketsDisabled: true,
	}
}
