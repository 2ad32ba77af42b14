package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ewgate certs control writes a serving certificate that a real ewgate serves on its VM control
// endpoint and that a client verifying as pilot-agent does (the name istiod.istio-system.svc,
// the roots of ca.crt) accepts; a second run reuses the CA; the key files are 0600.
func TestCertsControl(t *testing.T) {
	e := newVMTestEnv(t)
	out, caDir := filepath.Join(e.dir, "control-tls"), filepath.Join(e.dir, "control-ca")
	for range 2 { // the second run renews the certificate with the same CA
		if o, err := ewgate("certs", "control", "--out", out, "--ca-dir", caDir, "--dns", "ewgate.example.com").CombinedOutput(); err != nil {
			t.Fatalf("certs control: %v\n%s", err, o)
		}
	}
	ca1, _ := os.ReadFile(filepath.Join(caDir, certsCAFile))
	ca2, _ := os.ReadFile(filepath.Join(out, certsCAFile))
	if len(ca1) == 0 || !bytes.Equal(ca1, ca2) {
		t.Fatal("ca.crt in --out is not the CA of --ca-dir")
	}
	for _, f := range []string{filepath.Join(out, certsTLSKey), filepath.Join(caDir, certsCAKey)} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, want mode 0600", f, err)
		}
	}
	e.certFile, e.keyFile = filepath.Join(out, certsTLSCert), filepath.Join(out, certsTLSKey)
	path := filepath.Join(e.dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(e.config()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, path)
	control := p.addr(t, "control")
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca1) {
		t.Fatal("ca.crt holds no certificate")
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{{defaultSAN, true}, {"ewgate.example.com", true}, {"istiod.istio-system.svc.cluster.local", false}} {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 30 * time.Second}, "tcp", control, &tls.Config{RootCAs: roots, ServerName: tc.name, NextProtos: []string{"h2"}})
		if (err == nil) != tc.ok {
			t.Errorf("handshake as %s: %v; want ok=%v", tc.name, err, tc.ok)
		}
		if err == nil {
			c.Close()
		} else if !tc.ok && !strings.Contains(err.Error(), "certificate is valid for") {
			t.Errorf("handshake as %s failed for another reason: %v", tc.name, err)
		}
	}
	if o, err := ewgate("certs", "control").CombinedOutput(); err == nil || !strings.Contains(string(o), "--out DIR is required") {
		t.Errorf("certs control without --out: %v\n%s", err, o)
	}
}
