// Package meshca is the Istio certificate service of ewgate's built-in control plane
// (istio.v1.auth.IstioCertificateService/CreateCertificate): it signs a workload's CSR for the
// SPIFFE identity of the verified caller, never for the names the CSR asks for.
//
// Who the caller is comes from the context: the VM control endpoint (15012) authenticates every
// RPC and puts the identity there with authn.NewContext before the call reaches the CA. A call with
// no identity is refused (Unauthenticated). The CA key is generated on first start in a data
// directory, or loaded from files.
//
//	a, err := meshca.Open(meshca.Options{DataDir: dir})
//	securityv1alpha1.RegisterIstioCertificateServiceServer(grpcServer, a)
package meshca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/ewgate/ewgate/authn"
)

// Errors of the CA; the gRPC edge maps them to status codes.
var (
	ErrNoIdentity = errors.New("meshca: no verified caller identity")
	ErrBadCSR     = errors.New("meshca: certificate signing request is not valid")
)

// Files in Options.DataDir.
const (
	KeyFileName  = "ca-key.pem"
	CertFileName = "root-cert.pem"
)

// Options configure a CA. The zero value of each optional field is documented on it.
type Options struct {
	// DataDir holds ca-key.pem and root-cert.pem, created (0600) on first start.
	DataDir string
	// CertFile and KeyFile, when set, name the CA certificate and key to sign with instead.
	CertFile, KeyFile string
	TTL               time.Duration // zero: 24h, when the request asks for no validity
	MaxTTL            time.Duration // zero: 7 days; a longer request is cut to it
	TrustDomain       string        // zero: cluster.local; names a generated root
	// Identity returns the verified caller of a request. Nil: authn.FromContext.
	Identity func(ctx context.Context) *authn.Identity
	Now      func() time.Time // nil: time.Now
	Logger   *zap.Logger      // nil: no logs
	// Registerer receives ewgate_ca_certificates_total{result}. Nil: not exported.
	Registerer prometheus.Registerer
}

// CA signs workload certificates.
type CA struct {
	securityv1alpha1.UnimplementedIstioCertificateServiceServer
	opts    Options
	cert    *x509.Certificate
	key     crypto.Signer
	rootPEM string
	issued  *prometheus.CounterVec
}

var _ securityv1alpha1.IstioCertificateServiceServer = (*CA)(nil)

// Open loads the CA from CertFile/KeyFile, or from DataDir, generating a key and a self-signed
// root there when none exists yet.
func Open(opts Options) (*CA, error) {
	if opts.TTL <= 0 {
		opts.TTL = 24 * time.Hour
	}
	if opts.MaxTTL <= 0 {
		opts.MaxTTL = 7 * 24 * time.Hour
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.Identity == nil {
		opts.Identity = authn.FromContext
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	c := &CA{opts: opts, issued: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewgate_ca_certificates_total", Help: "Certificate requests to the built-in CA, by result (issued, unauthenticated, invalid).",
	}, []string{"result"})}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(c.issued)
	}
	certFile, keyFile := opts.CertFile, opts.KeyFile
	if certFile == "" {
		if opts.DataDir == "" {
			return nil, errors.New("meshca: give a data directory or a certificate and key file")
		}
		certFile, keyFile = filepath.Join(opts.DataDir, CertFileName), filepath.Join(opts.DataDir, KeyFileName)
		if _, err := os.Stat(keyFile); errors.Is(err, os.ErrNotExist) {
			if err := generate(opts.DataDir, opts.TrustDomain, opts.Now()); err != nil {
				return nil, err
			}
			opts.Logger.Info("generated a CA key and root certificate", zap.String("dir", opts.DataDir))
		}
	}
	if err := c.load(certFile, keyFile); err != nil {
		return nil, err
	}
	return c, nil
}

func generate(dir, trustDomain string, now time.Time) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("meshca: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("meshca: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{trustDomain}, CommonName: "ewgate root CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("meshca: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("meshca: %w", err)
	}
	// The key first: a crash in between leaves a key without a root, which the next start
	// reports, rather than a root whose key is lost.
	if err := writeNew(filepath.Join(dir, KeyFileName), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})); err != nil {
		return err
	}
	return writeNew(filepath.Join(dir, CertFileName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("meshca: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("meshca: write %s: %w", filepath.Base(path), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("meshca: %w", err)
	}
	return f.Close()
}

func (c *CA) load(certFile, keyFile string) error {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return fmt.Errorf("meshca: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("meshca: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return fmt.Errorf("meshca: %s: no PEM certificate", certFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("meshca: %s: %w", certFile, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return fmt.Errorf("meshca: %s: no PEM key", keyFile) // never print the key itself
	}
	key, err := parseKey(kb)
	if err != nil {
		return fmt.Errorf("meshca: %s: %w", keyFile, err)
	}
	if !cert.IsCA {
		return fmt.Errorf("meshca: %s is not a CA certificate", certFile)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return fmt.Errorf("meshca: %s does not belong to %s", keyFile, certFile)
	}
	c.cert, c.key, c.rootPEM = cert, key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	return nil
}

func parseKey(b *pem.Block) (crypto.Signer, error) {
	var k any
	var err error
	switch b.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	if err != nil {
		return nil, errors.New("not a readable private key")
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}

// RootPEM returns the CA certificate in PEM: what VMs get as root-cert.pem.
func (c *CA) RootPEM() string { return c.rootPEM }

// CreateCertificate signs the request's CSR for the caller's SPIFFE identity. The CSR's own
// names are ignored; only its public key and signature are used.
func (c *CA) CreateCertificate(ctx context.Context, req *securityv1alpha1.IstioCertificateRequest) (*securityv1alpha1.IstioCertificateResponse, error) {
	id := c.opts.Identity(ctx)
	if id == nil || id.SPIFFEID == "" {
		c.issued.WithLabelValues("unauthenticated").Inc()
		return nil, status.Error(codes.Unauthenticated, ErrNoIdentity.Error())
	}
	chain, err := c.Sign([]byte(req.GetCsr()), id, time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		c.issued.WithLabelValues("invalid").Inc()
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	c.issued.WithLabelValues("issued").Inc()
	c.opts.Logger.Info("certificate issued", zap.String("identity", id.SPIFFEID), zap.String("cluster", id.Cluster))
	return &securityv1alpha1.IstioCertificateResponse{CertChain: chain}, nil
}

// Sign issues a certificate for id's SPIFFE ID with the public key of csrPEM, valid for ttl
// (zero: the default TTL; capped at the maximum). It returns the PEM chain, leaf first, root
// last, as istiod does.
func (c *CA) Sign(csrPEM []byte, id *authn.Identity, ttl time.Duration) ([]string, error) {
	b, _ := pem.Decode(csrPEM)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: no PEM CERTIFICATE REQUEST", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	uri, err := url.Parse(id.SPIFFEID)
	if err != nil || uri.Scheme != "spiffe" {
		return nil, fmt.Errorf("meshca: identity %q is not a SPIFFE ID", id.SPIFFEID)
	}
	if ttl <= 0 {
		ttl = c.opts.TTL
	}
	ttl = min(ttl, c.opts.MaxTTL)
	now := c.opts.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		NotBefore:             now.Add(-time.Minute), // clock skew between ewgate and the VM
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, csr.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("meshca: sign: %w", err)
	}
	leaf := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return []string{leaf, c.rootPEM}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
