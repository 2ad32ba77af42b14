package testkit_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"go/parser"
	"go/token"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/prometheus/client_golang/prometheus"
)

const self = "github.com/ewgate/ewgate/gateway/testkit"

// imports returns the import paths of every .go file under dir that keep says to read, by file.
func imports(t *testing.T, dir string, keep func(path string) bool) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != dir && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); path != dir && err == nil {
				return filepath.SkipDir // another module (e2e) has its own rules
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || !keep(path) {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, im := range f.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			out[path] = append(out[path], p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestOnlyTestsImportTestkit keeps the test helpers out of the binary: no non-test file of the
// module may import this package.
func TestOnlyTestsImportTestkit(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("the module root is not two folders up from gateway/testkit: %v", err)
	}
	n := 0
	for file, paths := range imports(t, root, func(p string) bool { return !strings.HasSuffix(p, "_test.go") }) {
		n++
		for _, p := range paths {
			if p == self {
				rel, _ := filepath.Rel(root, file)
				t.Errorf("%s imports %s, which is for tests only: move the use into a _test.go file", rel, self)
			}
		}
	}
	if n < 50 {
		t.Fatalf("read only %d non-test files of the module; the walk is broken", n)
	}
}

// TestImportsNoEwgatePackage keeps the package importable from every package's internal tests:
// the standard library, go-jose and Prometheus's client only.
func TestImportsNoEwgatePackage(t *testing.T) {
	for file, paths := range imports(t, ".", func(p string) bool { return !strings.HasSuffix(p, "_test.go") }) {
		for _, p := range paths {
			first, _, _ := strings.Cut(p, "/")
			if strings.Contains(first, ".") && !strings.HasPrefix(p, "github.com/go-jose/go-jose/v4") &&
				!strings.HasPrefix(p, "github.com/prometheus/client_golang/") {
				t.Errorf("%s imports %s: testkit may import only the standard library, go-jose and Prometheus's client", file, p)
			}
		}
	}
}

func TestPKIHandshake(t *testing.T) {
	root := testkit.NewCA(t, "root")
	mid := root.Intermediate(t, "intermediate")
	srv := mid.Server(t, "server.test", "127.0.0.1")
	cli := root.Client(t, []string{"spiffe://cluster.local/ns/vm-ns/sa/web"})

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{srv.TLS()}, ClientCAs: root.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan []*x509.Certificate, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peer <- nil
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if tc.Handshake() != nil {
			peer <- nil
			return
		}
		peer <- tc.ConnectionState().PeerCertificates
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(),
		&tls.Config{ServerName: "127.0.0.1", RootCAs: root.Pool(), Certificates: []tls.Certificate{cli.TLS()}})
	if err != nil {
		t.Fatalf("handshake through the intermediate, IP SAN: %v", err)
	}
	c.Close()
	got := <-peer
	if len(got) != 1 || len(got[0].URIs) != 1 || got[0].URIs[0].String() != "spiffe://cluster.local/ns/vm-ns/sa/web" {
		t.Fatalf("server saw client chain %v, want one certificate with the SPIFFE URI", got)
	}
	if _, err := srv.X509.Verify(x509.VerifyOptions{DNSName: "server.test", Roots: root.Pool(), Intermediates: mid.Pool()}); err != nil {
		t.Fatalf("DNS SAN: %v", err)
	}

	dir := t.TempDir()
	certFile, keyFile := srv.WriteFiles(t, dir, "tls")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(pair.Certificate) != 2 {
		t.Fatalf("written chain has %d certificates, want leaf and intermediate", len(pair.Certificate))
	}
}

func TestToken(t *testing.T) {
	iss := testkit.NewIssuer(t, "https://issuer.test")
	tok := iss.Token(t, "vm-ns", "web", testkit.Claim("aud", "api"), testkit.Claim("jti", nil))

	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(iss.JWKS(t)), &set); err != nil {
		t.Fatal(err)
	}
	parsed, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var std jwt.Claims
	var k8s struct {
		K struct {
			Namespace string `json:"namespace"`
			SA        struct {
				Name string `json:"name"`
			} `json:"serviceaccount"`
		} `json:"kubernetes.io"`
	}
	if err := parsed.Claims(set.Key("k1")[0].Key, &std, &k8s); err != nil {
		t.Fatalf("token does not verify against the issuer's JWKS: %v", err)
	}
	if std.Issuer != "https://issuer.test" || std.Subject != "system:serviceaccount:vm-ns:web" ||
		!std.Audience.Contains("api") || std.ID != "" || k8s.K.Namespace != "vm-ns" || k8s.K.SA.Name != "web" {
		t.Fatalf("claims %+v %+v", std, k8s)
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Time: time.Now()}, 0); err != nil {
		t.Fatalf("fresh token not valid now: %v", err)
	}
}

func TestClock(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := testkit.NewClock(t0)
	var order []string
	var at []time.Duration
	c.AfterFunc(2*time.Second, func() { order = append(order, "b"); at = append(at, c.Since(t0)) })
	c.AfterFunc(time.Second, func() {
		order = append(order, "a")
		at = append(at, c.Since(t0))
		c.AfterFunc(500*time.Millisecond, func() { order = append(order, "a2"); at = append(at, c.Since(t0)) })
	})
	stopped := c.AfterFunc(1500*time.Millisecond, func() { order = append(order, "stopped") })
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop: want true once, then false")
	}
	c.Advance(1900 * time.Millisecond)
	if strings.Join(order, ",") != "a,a2" || c.Pending() != 1 || c.Since(t0) != 1900*time.Millisecond {
		t.Fatalf("after 1.9s: fired %v, %d pending, clock at %v", order, c.Pending(), c.Since(t0))
	}
	c.Advance(time.Second)
	want := []time.Duration{time.Second, 1500 * time.Millisecond, 2 * time.Second}
	if strings.Join(order, ",") != "a,a2,b" || len(at) != 3 || at[0] != want[0] || at[1] != want[1] || at[2] != want[2] {
		t.Fatalf("fired %v at %v, want a,a2,b at %v", order, at, want)
	}
}

func TestEventually(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	testkit.Eventually(t, "three increments", func() bool { return n.Load() == 3 })
}

func TestMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total"}, []string{"a", "b"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	reg.MustRegister(c, g)
	c.WithLabelValues("x", "1").Add(2)
	c.WithLabelValues("y", "1").Add(5)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"c_total", map[string]string{"a": "y"}, 5},
		{"c_total", map[string]string{"a": "x", "b": "1"}, 2},
		{"c_total", map[string]string{"a": "z"}, 0},
		{"c_total", map[string]string{"a": "x", "nope": "1"}, 0}, // a label the series lacks
		{"g", nil, 7},
		{"absent", nil, 0},
	} {
		if got := testkit.Metric(t, reg, tc.name, tc.labels); got != tc.want {
			t.Errorf("Metric(%s, %v) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
