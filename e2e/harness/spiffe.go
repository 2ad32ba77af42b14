package harness

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// VerifySPIFFE checks a peer the way Istio's peers do: the presented chain must verify to roots
// (intermediates taken from the chain, usage as given) and the leaf's URI SAN must be want.
// Envoy matches the SPIFFE ID (match_subject_alt_names), not the SNI: a workload certificate
// has no DNS name, and the SNI names the service (outbound_.<port>_._.<host>). crypto/tls
// always checks ServerName (which is also the SNI) against DNS names, so a client that sends an
// Istio SNI sets InsecureSkipVerify and puts this in VerifyConnection, which crypto/tls still
// calls: the whole chain and identity are checked here, nothing is skipped.
func VerifySPIFFE(roots *x509.CertPool, usage x509.ExtKeyUsage, want string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("spiffe: peer sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Errorf("spiffe: peer certificate: %w", err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
			return fmt.Errorf("spiffe: peer is %v, want %s", leaf.URIs, want)
		}
		return nil
	}
}

// IstioClientTLS is the client side of an Istio mTLS connection: the SNI and ALPN the cluster's
// transport socket names, the workload's certificate, the peer verified to roots with the
// SPIFFE ID want.
func IstioClientTLS(cert tls.Certificate, roots *x509.CertPool, sni string, alpn []string, want string) *tls.Config {
	return &tls.Config{
		ServerName:   sni,
		NextProtos:   alpn,
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// See VerifySPIFFE: crypto/tls would match the SNI against DNS names; the chain and the
		// SPIFFE ID are verified in VerifyConnection instead.
		InsecureSkipVerify: true,
		VerifyConnection:   VerifySPIFFE(roots, x509.ExtKeyUsageServerAuth, want),
	}
}

// IstioServerTLS is the server side: a client certificate is required, verified to roots by
// crypto/tls, and its SPIFFE ID must be want.
func IstioServerTLS(cert tls.Certificate, roots *x509.CertPool, alpn []string, want string) *tls.Config {
	return &tls.Config{
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        roots,
		NextProtos:       alpn,
		MinVersion:       tls.VersionTLS12,
		VerifyConnection: VerifySPIFFE(roots, x509.ExtKeyUsageClientAuth, want),
	}
}
