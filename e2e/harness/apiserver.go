package harness

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// startAttempts: a port picked free can be taken by someone else before the peer binds it
// (other suites run on this machine); the Start functions retry with new ports.
const startAttempts = 3

// Etcd is the running etcd (embedded etcd server, see cmd/etcd).
type Etcd struct {
	Proc      *Proc
	ClientURL string // http://127.0.0.1:<port>
}

// StartEtcd starts etcd and waits until it serves clients.
func StartEtcd(ctx context.Context, bin string) (*Etcd, error) {
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		addrs, err := freeAddrs(2)
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp(TempRoot(), "etcd-")
		if err != nil {
			return nil, err
		}
		client := "http://" + addrs[0]
		p, err := StartProc(ProcSpec{Name: "etcd", Path: bin, Dir: dir, Args: []string{
			"-data-dir", filepath.Join(dir, "data"),
			"-client-url", client,
			"-peer-url", "http://" + addrs[1],
		}})
		if err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = p.WaitLog(wctx, "etcd: ready")
		cancel()
		if err == nil {
			return &Etcd{Proc: p, ClientURL: client}, nil
		}
		lastErr = err
		_ = p.Stop(5 * time.Second)
		if !errors.Is(err, ErrExited) {
			break
		}
	}
	return nil, fmt.Errorf("harness: etcd: %w", lastErr)
}

// APIServer is a running kube-apiserver with an admin identity and clients for it.
type APIServer struct {
	Proc *Proc

	URL        string // https://127.0.0.1:<port>; also the service-account issuer
	Issuer     string
	CAPEM      []byte // the CA of its serving certificate
	CAFile     string
	CA         *CA
	AdminToken string // static token of user "admin" in group system:masters
	Kubeconfig string // admin kubeconfig (for kubectl, istiod)
	// SAKeyFile is the service-account signing key (RSA, PEM): scenarios can forge tokens with
	// it (an expired one: TokenRequest refuses lifetimes under 10 minutes).
	SAKeyFile string

	Config  *rest.Config
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
	APIExt  apiextclient.Interface

	kubectl string
}

// StartAPIServer starts kube-apiserver on etcdURL and waits for /readyz.
func StartAPIServer(ctx context.Context, bin, kubectl, etcdURL string) (*APIServer, error) {
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		a, err := startAPIServerOnce(ctx, bin, etcdURL)
		if err == nil {
			a.kubectl = kubectl
			return a, nil
		}
		lastErr = err
		if !errors.Is(err, ErrExited) {
			break
		}
	}
	return nil, fmt.Errorf("harness: kube-apiserver: %w", lastErr)
}

func startAPIServerOnce(ctx context.Context, bin, etcdURL string) (*APIServer, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(TempRoot(), "apiserver-")
	if err != nil {
		return nil, err
	}
	a := &APIServer{URL: fmt.Sprintf("https://127.0.0.1:%d", port)}
	a.Issuer = a.URL
	if err := a.writeFiles(dir); err != nil {
		return nil, err
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + f("certs"),
		"--tls-cert-file=" + f("serving.crt"),
		"--tls-private-key-file=" + f("serving.key"),
		"--client-ca-file=" + f("ca.crt"),
		"--token-auth-file=" + f("tokens.csv"),
		"--service-account-issuer=" + a.Issuer,
		"--service-account-jwks-uri=" + a.Issuer + "/openid/v1/jwks",
		"--service-account-key-file=" + f("sa.key"),
		"--service-account-signing-key-file=" + f("sa.key"),
		"--api-audiences=" + a.Issuer + ",istio-ca",
		"--anonymous-auth=true",
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		// Without it the apiserver logs an error every 10 s about its loopback address.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}
	p, err := StartProc(ProcSpec{Name: "kube-apiserver", Path: bin, Args: args, Dir: dir})
	if err != nil {
		return nil, err
	}
	a.Proc = p
	if err := a.clients(); err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	err = p.WaitFor(wctx, 200*time.Millisecond, func() error {
		body, code, err := a.Get(wctx, "/readyz", true)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/readyz %d: %s", code, body)
		}
		return nil
	})
	if err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, err
	}
	return a, nil
}

func (a *APIServer) writeFiles(dir string) error {
	ca, err := NewCA("ewgate-e2e-kube-ca")
	if err != nil {
		return err
	}
	a.CA = ca
	a.CAPEM = ca.CertPEM
	crt, key, err := ca.Issue(LeafOptions{
		CommonName: "kube-apiserver",
		DNSNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPs:        []net.IP{net.IPv4(127, 0, 0, 1)},
	})
	if err != nil {
		return err
	}
	saKey, err := newRSAKeyPEM()
	if err != nil {
		return err
	}
	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	a.AdminToken = hex.EncodeToString(tok)
	a.CAFile = filepath.Join(dir, "ca.crt")
	a.SAKeyFile = filepath.Join(dir, "sa.key")
	a.Kubeconfig = filepath.Join(dir, "kubeconfig")
	files := map[string][]byte{
		"ca.crt":      ca.CertPEM,
		"serving.crt": crt,
		"serving.key": key,
		"sa.key":      saKey,
		"tokens.csv":  []byte(a.AdminToken + `,admin,admin,"system:masters"` + "\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return fmt.Errorf("harness: %w", err)
		}
	}
	return a.writeKubeconfig(a.Kubeconfig)
}

func (a *APIServer) writeKubeconfig(path string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: a.URL, CertificateAuthorityData: a.CAPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: a.AdminToken}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("harness: kubeconfig: %w", err)
	}
	return nil
}

func (a *APIServer) clients() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", a.Kubeconfig)
	if err != nil {
		return fmt.Errorf("harness: rest config: %w", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	cfg.Timeout = 30 * time.Second
	a.Config = cfg
	if a.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if a.Dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		return err
	}
	a.APIExt, err = apiextclient.NewForConfig(cfg)
	return err
}

// HTTPClient trusts only the apiserver's CA and sends no credentials.
func (a *APIServer) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: a.CA.Pool(), MinVersion: tls.VersionTLS12},
		},
	}
}

// Get fetches path over TLS (verified with the CA), as admin if admin is set, else anonymously.
func (a *APIServer) Get(ctx context.Context, path string, admin bool) (body []byte, code int, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+path, nil)
	if err != nil {
		return nil, 0, err
	}
	if admin {
		req.Header.Set("Authorization", "Bearer "+a.AdminToken)
	}
	resp, err := a.HTTPClient().Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return body, resp.StatusCode, err
}

// Kubectl runs the real kubectl against this apiserver with the admin kubeconfig.
func (a *APIServer) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	if a.kubectl == "" {
		return nil, fmt.Errorf("harness: no kubectl")
	}
	dir, err := os.MkdirTemp(TempRoot(), "kubectl-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "KUBECONFIG=" + a.Kubeconfig}
	full := append([]string{"--kubeconfig=" + a.Kubeconfig, "--cache-dir=" + filepath.Join(dir, "cache")}, args...)
	out, err := runCmd(ctx, dir, env, a.kubectl, full...)
	if err != nil {
		return out, fmt.Errorf("harness: %w", err)
	}
	return out, nil
}

// Stop stops the apiserver.
func (a *APIServer) Stop() error {
	// An apiserver whose etcd is gone ignores SIGTERM for 30 s+: stop it first, with a short
	// grace period.
	return a.Proc.Stop(10 * time.Second)
}

// LateKubeconfig writes a kubeconfig of a that reaches it through a free loopback address
// nothing listens on yet (an API server out of reach), and returns it with open, which starts
// forwarding that address to a. The forwarder stops when the test ends.
func (a *APIServer) LateKubeconfig(t testing.TB) (path string, open func()) {
	t.Helper()
	addr := freeLoopback(t)
	via := *a
	via.URL = "https://" + addr
	path = filepath.Join(t.TempDir(), "late-kubeconfig")
	if err := via.writeKubeconfig(path); err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(a.URL, "https://")
	return path, func() {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("harness: late API server address %s: %v", addr, err)
		}
		serveForward(t, ln, func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", target)
		})
	}
}
