package harness

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
)

// The shared root of a MultiCluster: intermediates for Istio's plug-in CA files.

// SamePEMCerts reports whether a and b hold the same certificates (DER), ignoring PEM layout.
func SamePEMCerts(a, b []byte) bool {
	da, db := pemDERs(a), pemDERs(b)
	if len(da) == 0 || len(da) != len(db) {
		return false
	}
	for i := range da {
		if !bytes.Equal(da[i], db[i]) {
			return false
		}
	}
	return true
}

func pemDERs(b []byte) [][]byte {
	var out [][]byte
	for i := 0; i < 100; i++ {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		out = append(out, blk.Bytes)
	}
	return out
}

// NewIntermediate issues a CA certificate signed by ca (an intermediate, path length 0, valid
// within ca's validity).
func (ca *CA) NewIntermediate(commonName string) (*CA, error) {
	sub, err := NewCA(commonName) // only for its key
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"ewgate e2e"}},
		NotBefore:             ca.Cert.NotBefore,
		NotAfter:              ca.Cert.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, sub.Key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("harness: intermediate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("harness: intermediate: %w", err)
	}
	return &CA{Cert: cert, Key: sub.Key, CertPEM: pemBlock("CERTIFICATE", der)}, nil
}

// KeyPEM is the CA's private key as SEC 1 "EC PRIVATE KEY" PEM (Istio's ca-key.pem).
func (ca *CA) KeyPEM() ([]byte, error) {
	k, ok := ca.Key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("harness: CA key is %T, want ECDSA", ca.Key)
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pemBlock("EC PRIVATE KEY", der), nil
}
