package authn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// loadBundles reads the trust bundles, merging the entries of one trust
// domain into one pool.
func loadBundles(tbs []TrustBundleConfig) (map[string]*bundle, error) {
	out := map[string]*bundle{}
	for i, tb := range tbs {
		data, err := os.ReadFile(tb.CAFile)
		if err != nil {
			return nil, fmt.Errorf("authn: client_certs.trust_bundles[%d].ca_file: %w", i, err)
		}
		b := out[tb.TrustDomain]
		if b == nil {
			b = &bundle{pool: x509.NewCertPool(), cluster: tb.Cluster}
			out[tb.TrustDomain] = b
		}
		if !b.pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("authn: client_certs.trust_bundles[%d].ca_file: no PEM certificate found", i)
		}
	}
	return out, nil
}

// VerifyConnectionState verifies the client certificate of a TLS connection
// (see VerifyCert). The TLS config may use tls.RequestClientCert: the chain
// is verified here against the bundle of the certificate's own trust
// domain, not against a single pool for all domains.
func (v *Verifier) VerifyConnectionState(cs *tls.ConnectionState) (*Identity, error) {
	return v.VerifyCert(cs.PeerCertificates)
}

// VerifyCert verifies a client certificate chain (leaf first, then any
// intermediates) and returns the identity of its SPIFFE URI SAN
// spiffe://<trust domain>/ns/<ns>/sa/<sa>. The leaf must carry exactly one
// SPIFFE URI; the chain must verify, for client authentication and at the
// injected clock's time, against the trust bundle of that trust domain.
func (v *Verifier) VerifyCert(chain []*x509.Certificate) (*Identity, error) {
	id, label, err := v.verifyCert(chain)
	v.m.results.WithLabelValues(label, Reason(err)).Inc()
	return id, err
}

func (v *Verifier) verifyCert(chain []*x509.Certificate) (*Identity, string, error) {
	if len(chain) == 0 || chain[0] == nil {
		return nil, "none", refuse(ErrUntrustedCert, "no client certificate")
	}
	leaf := chain[0]
	var uris []string
	for _, u := range leaf.URIs {
		if strings.EqualFold(u.Scheme, "spiffe") {
			uris = append(uris, u.String())
		}
	}
	if len(uris) != 1 {
		return nil, "none", refuse(ErrBadSubject, fmt.Sprintf("certificate has %d SPIFFE URIs, want exactly 1", len(uris)))
	}
	td, ns, sa, ok := parseSPIFFEID(uris[0])
	if !ok {
		return nil, "none", refuse(ErrBadSubject, "URI SAN "+quote(uris[0])+" is not spiffe://<trust domain>/ns/<ns>/sa/<sa>")
	}
	b := v.bundles[td]
	if b == nil {
		return nil, "none", refuse(ErrBadTrustDomain, "trust domain "+quote(td))
	}
	label := "spiffe://" + td
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         b.pool,
		Intermediates: inter,
		CurrentTime:   v.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			// x509 says "expired or not yet valid"; tell them apart.
			if v.now().Before(leaf.NotBefore) {
				return nil, label, refuse(ErrNotYetValid, "certificate")
			}
			return nil, label, refuse(ErrExpired, "certificate chain")
		}
		return nil, label, refuse(ErrUntrustedCert, err.Error())
	}
	return &Identity{
		Cluster:        b.cluster,
		Namespace:      ns,
		ServiceAccount: sa,
		TrustDomain:    td,
		SPIFFEID:       spiffeID(td, ns, sa),
		ExpiresAt:      leaf.NotAfter,
		Source:         SourceCert,
	}, label, nil
}

// ClientCAs returns a pool of every configured trust bundle, for a
// tls.Config that wants the handshake itself to check client certificates
// (VerifyCert still checks the trust domain).
func (v *Verifier) ClientCAs() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, tb := range v.cfg.ClientCerts.TrustBundles {
		if data, err := os.ReadFile(tb.CAFile); err == nil {
			pool.AppendCertsFromPEM(data)
		}
	}
	return pool
}
