package vmcontrol_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(memoryChildEnv); dir != "" {
		os.Exit(memoryChild(dir)) // the VM side of TestFrontMemoryPerStream, in a process of its own
	}
	goleak.VerifyTestMain(m)
}

const (
	issuer     = "https://kubernetes.default.svc.cluster.local"
	serverName = "istiod.istio-system.svc"
	vmNS       = "vm-ns"
	vmSA       = "web"
)

var (
	serial    atomic.Int64
	tokenKey  *rsa.PrivateKey
	tokenOnce sync.Once
)

// ca is a test certificate authority.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

func newCA(t testing.TB, name string) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf issues a certificate for DNS names / IPs (server) or a SPIFFE URI (client).
func (c *ca) leaf(t testing.TB, dns []string, uri string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    dns, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writePair(t testing.TB, dir, prefix string, c tls.Certificate) (string, string) {
	t.Helper()
	kder, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, prefix+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})),
		writeFile(t, dir, prefix+".key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
}

func signingKey(t testing.TB) *rsa.PrivateKey {
	tokenOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		tokenKey = k
	})
	return tokenKey
}

func jwksJSON(t testing.TB) string {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: signingKey(t).Public(), KeyID: "k1", Use: "sig", Algorithm: "RS256"}}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type k8sClaims struct {
	Namespace      string            `json:"namespace"`
	ServiceAccount map[string]string `json:"serviceaccount"`
}

// token mints a Kubernetes service-account token as a kube-apiserver's TokenRequest does.
func token(t testing.TB, ns, sa string, mutate ...func(*jwt.Claims)) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: signingKey(t)},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c := jwt.Claims{Issuer: issuer, Subject: "system:serviceaccount:" + ns + ":" + sa, Audience: jwt.Audience{"istio-ca"},
		Expiry: jwt.NewNumericDate(now.Add(time.Hour)), IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), ID: "x"}
	for _, m := range mutate {
		m(&c)
	}
	tok, err := jwt.Signed(s).Claims(c).Claims(map[string]any{"kubernetes.io": k8sClaims{Namespace: ns,
		ServiceAccount: map[string]string{"name": sa, "uid": "uid-1"}}}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// pki is everything a test gateway needs: the serving CA (what VMs trust), the mesh root (client
// certificates) and the verifier.
type pki struct {
	dir               string
	serving, mesh     *ca
	certFile, keyFile string
	meshFile          string
	servingFile       string
	verifier          *authn.Verifier
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), serving: newCA(t, "ewgate serving CA"), mesh: newCA(t, "mesh root")}
	p.certFile, p.keyFile = writePair(t, p.dir, "serving", p.serving.leaf(t, []string{serverName}, ""))
	p.meshFile = writeFile(t, p.dir, "mesh-root.pem", p.mesh.pem)
	p.servingFile = writeFile(t, p.dir, "serving-ca.pem", p.serving.pem)
	v, err := authn.New(context.Background(), authn.Config{
		Issuers:     []authn.IssuerConfig{{Issuer: issuer, Cluster: "c1", JWKS: jwksJSON(t)}},
		ClientCerts: authn.ClientCertConfig{TrustBundles: []authn.TrustBundleConfig{{TrustDomain: "cluster.local", CAFile: p.meshFile, Cluster: "c1"}}},
	}, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	p.verifier = v
	return p
}

// gateway is a running front on loopback.
type gateway struct {
	*vmcontrol.Front
	addr   string
	cancel context.CancelFunc
	done   chan error
}

func startFront(t testing.TB, p *pki, cfg vmcontrol.Config, opts vmcontrol.Options) *gateway {
	t.Helper()
	cfg.TLS.CertFile, cfg.TLS.KeyFile = p.certFile, p.keyFile
	opts.Verifier = p.verifier
	f, err := vmcontrol.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gateway{Front: f, addr: ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { g.done <- f.Serve(ctx, ln) }()
	t.Cleanup(g.stop)
	return g
}

func (g *gateway) stop() {
	g.cancel()
	<-g.done
	g.done <- nil // stop is idempotent
}

// vm is a grpc-go client as pilot-agent makes it: TLS to the serving name, a token per RPC.
func (g *gateway) dial(t testing.TB, p *pki, cert ...tls.Certificate) *grpc.ClientConn {
	t.Helper()
	tc := &tls.Config{RootCAs: p.serving.pool(), ServerName: serverName, Certificates: cert}
	cc, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func withToken(ctx context.Context, tok string, kv ...string) context.Context {
	if tok != "" {
		kv = append(kv, "authorization", "Bearer "+tok)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// fakeClock is a registrar.Clock moved by Advance; timers fire from Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c  *fakeClock
	at time.Time
	f  func()
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) registrar.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if !t.at.After(c.now) {
			due = append(due, t)
			return true
		}
		return false
	})
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// eventually polls cond every millisecond until it holds or 10s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		<-tick.C
	}
}
