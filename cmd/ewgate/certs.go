package main

// ewgate certs control: the serving certificate of the VM control endpoint (15012). A VM's
// pilot-agent dials its discovery address and checks the certificate for the name istiod serves,
// istiod.istio-system.svc (--istiod-san of vm-config), against the roots in its root-cert.pem;
// so the certificate must name it, and its CA goes into the VMs' bundles (vm-config
// --serving-ca). The CA is kept in --ca-dir (ca.crt, ca.key 0600), created on first use and
// reused afterwards, so every replica's certificate and every renewal chain to the same root.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	certsCAFile  = "ca.crt"
	certsCAKey   = "ca.key"
	certsTLSCert = "tls.crt"
	certsTLSKey  = "tls.key"
)

func cmdCerts(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "control" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, certsUsage)
			return 0
		}
		fmt.Fprint(stderr, certsUsage)
		return 2
	}
	fs := flag.NewFlagSet("ewgate certs control", flag.ContinueOnError)
	out := fs.String("out", "", "directory for tls.crt, tls.key (0600) and ca.crt (required)")
	caDir := fs.String("ca-dir", "", "directory of the CA (ca.crt, ca.key), created on first use; default: --out")
	var names stringList
	fs.Var(&names, "dns", "another DNS name for the certificate (repeatable); istiod.istio-system.svc is always included")
	validity := fs.Duration("validity", 365*24*time.Hour, "validity of the serving certificate")
	if err := parseFlags(fs, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "ewgate certs control: %v\n", err)
		return 2
	}
	if *out == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ewgate certs control: --out DIR is required (and nothing else)\n%s", certsUsage)
		return 2
	}
	if *caDir == "" {
		*caDir = *out
	}
	if err := writeControlCert(*out, *caDir, append([]string{defaultSAN}, names...), *validity, time.Now()); err != nil {
		fmt.Fprintf(stderr, "ewgate certs control: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s, %s and %s to %s (CA in %s); names: %s\n", certsTLSCert, certsTLSKey, certsCAFile, *out, *caDir,
		strings.Join(append([]string{defaultSAN}, names...), ", "))
	return 0
}

const certsUsage = `usage: ewgate certs control --out DIR [--ca-dir DIR] [--dns NAME ...] [--validity 8760h]

Writes the VM control endpoint's (15012) serving certificate: tls.crt and tls.key for
control.tls.cert_file/key_file (or the Secret ewgate-control-tls), naming istiod.istio-system.svc,
and ca.crt, the CA VMs trust (ewgate vm-config --serving-ca). The CA is created in --ca-dir on first
use and reused afterwards.
`

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// writeControlCert signs a serving certificate for names with the CA in caDir (created when it
// holds none) and writes it, its key and the CA certificate to out.
func writeControlCert(out, caDir string, names []string, validity time.Duration, now time.Time) error {
	ca, caKey, err := loadOrCreateCA(caDir, now)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{certsTLSKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{certsTLSCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644},
		{certsCAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644},
	}
	for _, f := range files {
		if err := writeAtomic(filepath.Join(out, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// loadOrCreateCA reads caDir's CA, or creates one there (10 years, its key 0600).
func loadOrCreateCA(dir string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, cerr := os.ReadFile(filepath.Join(dir, certsCAFile))
	keyPEM, kerr := os.ReadFile(filepath.Join(dir, certsCAKey))
	switch {
	case cerr == nil && kerr == nil:
		cb, _ := pem.Decode(certPEM)
		kb, _ := pem.Decode(keyPEM)
		if cb == nil || kb == nil {
			return nil, nil, fmt.Errorf("%s: %s or %s holds no PEM block", dir, certsCAFile, certsCAKey)
		}
		cert, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, certsCAFile), err)
		}
		k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", filepath.Join(dir, certsCAKey), err)
		}
		key, ok := k.(*ecdsa.PrivateKey)
		if !ok || !key.PublicKey.Equal(cert.PublicKey) {
			return nil, nil, fmt.Errorf("%s: %s is not the ECDSA key of %s", dir, certsCAKey, certsCAFile)
		}
		return cert, key, nil
	case !errors.Is(cerr, os.ErrNotExist) || !errors.Is(kerr, os.ErrNotExist):
		return nil, nil, fmt.Errorf("%s: want both %s and %s, or neither (to create them): %v", dir, certsCAFile, certsCAKey, errors.Join(cerr, kerr))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "ewgate VM control endpoint CA"},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	if err := writeAtomic(filepath.Join(dir, certsCAKey), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeAtomic(filepath.Join(dir, certsCAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

// writeAtomic writes data to path through a temporary file in the same directory.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), mode)); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}
