package vmcontrol_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/testkit"
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

// token mints a service-account token of the test issuer for ns/sa.
func token(t testing.TB, ns, sa string, opts ...testkit.TokenOption) string {
	t.Helper()
	return testkit.NewIssuer(t, issuer).Token(t, ns, sa, opts...)
}

// pki is everything a test gateway needs: the serving CA (what VMs trust), the mesh root (client
// certificates) and the verifier.
type pki struct {
	dir               string
	serving, mesh     *testkit.Cert
	certFile, keyFile string
	meshFile          string
	servingFile       string
	verifier          *authn.Verifier
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), serving: testkit.NewCA(t, "ewgate serving CA"), mesh: testkit.NewCA(t, "mesh root")}
	p.certFile, p.keyFile = p.serving.Server(t, serverName).WriteFiles(t, p.dir, "serving")
	p.meshFile = testkit.WriteFile(t, p.dir, "mesh-root.pem", p.mesh.PEM())
	p.servingFile = testkit.WriteFile(t, p.dir, "serving-ca.pem", p.serving.PEM())
	v, err := authn.New(context.Background(), authn.Config{
		Issuers:     []authn.IssuerConfig{{Issuer: issuer, Cluster: "c1", JWKS: testkit.NewIssuer(t, issuer).JWKS(t)}},
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
	tc := &tls.Config{RootCAs: p.serving.Pool(), ServerName: serverName, Certificates: cert}
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

// fakeClock is testkit's clock as a registrar.Clock, whose AfterFunc returns a registrar.Timer.
type fakeClock struct{ *testkit.Clock }

func (c *fakeClock) AfterFunc(d time.Duration, f func()) registrar.Timer {
	return c.Clock.AfterFunc(d, f)
}
