package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
)

// IstiodConn says how to reach an istiod's 15012 (xDS and CA) as a workload does: TLS verified
// to Roots with ServerName, a bearer token, the ClusterID gRPC metadata pilot-agent sends.
type IstiodConn struct {
	Addr       string         // host:port of 15012
	ServerName string         // name checked in istiod's certificate (istiod.istio-system.svc)
	Roots      *x509.CertPool // the mesh root
	Token      string         // service-account token, audience istio-ca; never logged
	ClusterID  string         // sent as gRPC metadata ClusterID (pilot-agent does)
	// Dial, if set, opens the TCP connection (e.g. NetNS.DialContext from inside a network).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Cert, if set, is presented as the client certificate.
	Cert *tls.Certificate
}

// grpcConn dials c: TLS verified to c.Roots, nothing skipped.
func (c IstiodConn) grpcConn() (*grpc.ClientConn, error) {
	if c.Roots == nil || c.ServerName == "" {
		return nil, fmt.Errorf("harness: istiod %s: Roots and ServerName are required (no unverified TLS)", c.Addr)
	}
	cfg := &tls.Config{RootCAs: c.Roots, ServerName: c.ServerName, MinVersion: tls.VersionTLS12}
	if c.Cert != nil {
		cert := *c.Cert
		cfg.Certificates = []tls.Certificate{cert}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}
	if c.Dial != nil {
		dial := c.Dial
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		}))
	}
	return grpc.NewClient("passthrough:///"+c.Addr, opts...)
}

func (c IstiodConn) outgoing(ctx context.Context) context.Context {
	md := metadata.MD{}
	if c.Token != "" {
		md.Set("authorization", "Bearer "+c.Token)
	}
	if c.ClusterID != "" {
		md.Set("ClusterID", c.ClusterID)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// WorkloadCert is a workload certificate an istiod's CA issued.
type WorkloadCert struct {
	TLS      tls.Certificate // leaf + the chain istiod returned (without the root)
	Leaf     *x509.Certificate
	RootPEM  []byte   // the last certificate istiod returned (its root-cert.pem)
	ChainPEM []string // everything istiod returned, leaf first
}

// SPIFFEID is the leaf's URI SAN (empty if none).
func (w *WorkloadCert) SPIFFEID() string {
	if len(w.Leaf.URIs) == 0 {
		return ""
	}
	return w.Leaf.URIs[0].String()
}

// RequestWorkloadCert asks istiod's CA (IstioCertificateService/CreateCertificate on 15012) for a
// workload certificate, as pilot-agent does: a new P-256 key, a CSR naming spiffeID, the token
// as the credential. istiod puts the identity it authenticated into the certificate, not the
// CSR's.
func RequestWorkloadCert(ctx context.Context, c IstiodConn, spiffeID string, ttl time.Duration) (*WorkloadCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(spiffeID)
	if err != nil {
		return nil, fmt.Errorf("harness: csr: %q: %w", spiffeID, err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{}, URIs: []*url.URL{u},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("harness: csr: %w", err)
	}
	// istio.v1.auth.IstioCertificateRequest{csr = 1, validity_duration = 2}, written by hand so
	// this module needs no istio.io/api.
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendString(req, string(pemBlock("CERTIFICATE REQUEST", csrDER)))
	req = protowire.AppendTag(req, 2, protowire.VarintType)
	req = protowire.AppendVarint(req, uint64(ttl/time.Second))

	conn, err := c.grpcConn()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var resp []byte
	err = conn.Invoke(c.outgoing(ctx), "/istio.v1.auth.IstioCertificateService/CreateCertificate",
		&req, &resp, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return nil, fmt.Errorf("harness: CreateCertificate at %s: %w", c.Addr, err)
	}
	chain, err := parseCertChain(resp)
	if err != nil {
		return nil, err
	}
	if len(chain) < 2 {
		return nil, fmt.Errorf("harness: CreateCertificate at %s returned %d certificates, want leaf..root", c.Addr, len(chain))
	}
	w := &WorkloadCert{ChainPEM: chain, RootPEM: []byte(chain[len(chain)-1])}
	for _, p := range chain[:len(chain)-1] {
		b, _ := pem.Decode([]byte(p))
		if b == nil {
			return nil, fmt.Errorf("harness: CreateCertificate: a certificate that is not PEM")
		}
		w.TLS.Certificate = append(w.TLS.Certificate, b.Bytes)
	}
	w.TLS.PrivateKey = key
	if w.Leaf, err = x509.ParseCertificate(w.TLS.Certificate[0]); err != nil {
		return nil, fmt.Errorf("harness: CreateCertificate: leaf: %w", err)
	}
	w.TLS.Leaf = w.Leaf
	return w, nil
}

// parseCertChain reads IstioCertificateResponse{repeated string cert_chain = 1}.
func parseCertChain(b []byte) ([]string, error) {
	var out []string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("harness: CreateCertificate response: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, m := protowire.ConsumeString(b)
			if m < 0 {
				return nil, fmt.Errorf("harness: CreateCertificate response: %w", protowire.ParseError(m))
			}
			out = append(out, v)
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil, fmt.Errorf("harness: CreateCertificate response: %w", protowire.ParseError(m))
		}
		b = b[m:]
	}
	return out, nil
}

// rawCodec passes already-encoded protobuf bytes (*[]byte) through gRPC.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }
