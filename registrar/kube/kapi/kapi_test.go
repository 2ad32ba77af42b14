package kapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// apiServer is a loopback TLS server that answers GET of an object and records who asked:
// the bearer token and the client certificate's common name. It stands for the API server's
// authentication front only; the API itself is tested against the real kube-apiserver in e2e
// (the kube store's and vm-config's scenarios).
type apiServer struct {
	*httptest.Server
	ca     *testkit.Cert
	client *testkit.Cert // a client certificate the server trusts
	mu     sync.Mutex
	seen   []string // "token:<t>" or "cert:<cn>" per request
	refuse string   // a token answered with 401
}

func newAPIServer(t *testing.T) *apiServer {
	ca := testkit.NewCA(t, "kapi test CA")
	client := ca.Client(t, nil, func(c *x509.Certificate) { c.Subject.CommonName = "admin" })
	a := &apiServer{ca: ca, client: client}
	a.Server = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	a.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server(t, "127.0.0.1").TLS()},
		ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven}
	a.StartTLS()
	t.Cleanup(a.Close)
	return a
}

func (a *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	who := "anonymous"
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		who = "token:" + tok
	} else if len(r.TLS.PeerCertificates) > 0 {
		who = "cert:" + r.TLS.PeerCertificates[0].Subject.CommonName
	}
	a.mu.Lock()
	a.seen = append(a.seen, who)
	refused := a.refuse != "" && who == "token:"+a.refuse
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if refused || who == "anonymous" {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`)
		return
	}
	if r.URL.Path != "/api/v1/namespaces/ns/configmaps/c" {
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"configmaps not found","reason":"NotFound","code":404}`)
		return
	}
	fmt.Fprint(w, `{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c","namespace":"ns","resourceVersion":"12345678901234"}}`)
}

func (a *apiServer) who() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.seen...)
}

// kubeconfig writes a kubeconfig for a with the given user block (YAML, indented 4).
func (a *apiServer) kubeconfig(t *testing.T, dir, user string) string {
	ca := testkit.WriteFile(t, dir, "ca.pem", a.ca.PEM())
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
current-context: e2e
contexts:
- name: e2e
  context: {cluster: c1, user: u1, namespace: default}
clusters:
- name: other
  cluster: {server: "https://192.0.2.1:1"}
- name: c1
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: u1
  user:
%s
`, a.URL, filepath.Base(ca), user)
	return testkit.WriteFile(t, dir, "kubeconfig", []byte(kc))
}

func get(t *testing.T, kubeconfig string) (Object, error) {
	t.Helper()
	cfg, err := Kubeconfig(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.Resource("", "v1", "configmaps").Get(context.Background(), "ns", "c")
}

// TestKubeconfigCredentials: each way a kubeconfig user authenticates reaches the server as
// that credential, over TLS checked against the kubeconfig's CA (a relative file name, read
// from the kubeconfig's directory).
func TestKubeconfigCredentials(t *testing.T) {
	a := newAPIServer(t)
	dir := t.TempDir()
	certFile, keyFile := a.client.WriteFiles(t, dir, "client")
	testkit.WriteFile(t, dir, "token", []byte("from-file\n"))
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	plugin := testkit.WriteFile(t, dir, "plugin.sh", []byte(`#!/bin/sh
case "$KUBERNETES_EXEC_INFO" in *'"server":"`+a.URL+`"'*) ;; *) echo "no cluster info: $KUBERNETES_EXEC_INFO" >&2; exit 1;; esac
echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"from-'"$WHO"'"}}'
`))
	cred, _ := json.Marshal(map[string]any{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
		"status": map[string]any{"clientCertificateData": string(a.client.PEM()), "clientKeyData": string(a.client.KeyPEM(t))}})
	testkit.WriteFile(t, dir, "cred.json", cred)
	certPlugin := testkit.WriteFile(t, dir, "cert-plugin.sh", []byte("#!/bin/sh\nexec cat \"$(dirname \"$0\")/cred.json\"\n"))
	for _, p := range []string{plugin, certPlugin} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ name, user, want string }{
		{"token", `    token: static-token`, "token:static-token"},
		{"token file", `    tokenFile: token`, "token:from-file"},
		{"client certificate files", fmt.Sprintf("    client-certificate: %s\n    client-key: %s", filepath.Base(certFile), keyFile), "cert:admin"},
		{"client certificate data", fmt.Sprintf("    client-certificate-data: %s\n    client-key-data: %s", b64(a.client.PEM()), b64(a.client.KeyPEM(t))), "cert:admin"},
		{"exec plugin", `    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./plugin.sh
      env: [{name: WHO, value: plugin}]
      provideClusterInfo: true
      interactiveMode: Never`, "token:from-plugin"},
		{"exec plugin giving a client certificate", `    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: ./cert-plugin.sh`, "cert:admin"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(a.who())
			o, err := get(t, a.kubeconfig(t, dir, c.user))
			if err != nil {
				t.Fatal(err)
			}
			if o.Name() != "c" || o.ResourceVersion() != "12345678901234" {
				t.Fatalf("object %v", o)
			}
			if got := a.who()[before:]; len(got) != 1 || got[0] != c.want {
				t.Fatalf("server saw %v, want [%s]", got, c.want)
			}
		})
	}
}

// TestRefusedTokenRefreshed: after a 401 the token file is read again and the request
// retried once with the new token (kubelet rotates projected tokens in place); a refusal is a
// StatusError with the API server's reason.
func TestRefusedTokenRefreshed(t *testing.T) {
	a := newAPIServer(t)
	dir := t.TempDir()
	tokenFile := testkit.WriteFile(t, dir, "token", []byte("old"))
	kc := a.kubeconfig(t, dir, "    tokenFile: token")
	if _, err := get(t, kc); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.refuse = "old"
	a.mu.Unlock()
	if err := os.WriteFile(tokenFile, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Kubeconfig(kc)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := New(cfg)
	defer c.Close()
	cfg.creds.(*fileToken).tok = "old" // as a client that read the file before it rotated
	if _, err := c.Resource("", "v1", "configmaps").Get(context.Background(), "ns", "c"); err != nil {
		t.Fatalf("after rotation: %v (server saw %v)", err, a.who())
	}
	if got := a.who(); got[len(got)-2] != "token:old" || got[len(got)-1] != "token:new" {
		t.Fatalf("server saw %v", got)
	}
	_, err = c.Resource("", "v1", "configmaps").Get(context.Background(), "ns", "missing")
	if ReasonOf(err) != ReasonNotFound || CodeOf(err) != 404 {
		t.Fatalf("missing object: %v", err)
	}
}

// TestInCluster reads the service account directory and the Pod's environment.
func TestInCluster(t *testing.T) {
	a := newAPIServer(t)
	dir := t.TempDir()
	testkit.WriteFile(t, dir, "token", []byte("sa-token"))
	testkit.WriteFile(t, dir, "ca.crt", a.ca.PEM())
	host, port, _ := strings.Cut(strings.TrimPrefix(a.URL, "https://"), ":")
	env := map[string]string{envHost: host, envPort: port}
	cfg, err := inClusterAt(dir, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	c, _ := New(cfg)
	defer c.Close()
	if _, err := c.Resource("", "v1", "configmaps").Get(context.Background(), "ns", "c"); err != nil {
		t.Fatal(err)
	}
	if got := a.who(); got[len(got)-1] != "token:sa-token" {
		t.Fatalf("server saw %v", got)
	}
	if _, err := inClusterAt(dir, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), envHost) {
		t.Fatalf("outside a Pod: %v", err)
	}
}

// TestKubeconfigRefusals: what is not supported is refused at load, naming the field; an
// unknown CA refuses the server.
func TestKubeconfigRefusals(t *testing.T) {
	a := newAPIServer(t)
	dir := t.TempDir()
	for _, c := range []struct{ user, want string }{
		{`    auth-provider: {name: gcp}`, "auth-provider"},
		{"    username: u\n    password: p", "basic auth"},
		{`    as: someone`, "impersonation"},
		{"    exec: {apiVersion: client.authentication.k8s.io/v1alpha1, command: x}", "apiVersion"},
		{"    exec: {apiVersion: client.authentication.k8s.io/v1, command: x, interactiveMode: Always}", "interactiveMode"},
	} {
		if _, err := Kubeconfig(a.kubeconfig(t, dir, c.user)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.user, err)
		}
	}
	insecure := testkit.WriteFile(t, dir, "insecure", []byte(`current-context: x
contexts: [{name: x, context: {cluster: c}}]
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
`))
	if _, err := Kubeconfig(insecure); err == nil || !strings.Contains(err.Error(), "insecure-skip-tls-verify") {
		t.Errorf("insecure-skip-tls-verify: %v", err)
	}
	other := testkit.NewCA(t, "another CA")
	testkit.WriteFile(t, dir, "ca.pem", other.PEM())
	kc := filepath.Join(dir, "kubeconfig")
	raw, _ := os.ReadFile(a.kubeconfig(t, dir, "    token: t"))
	os.WriteFile(kc, raw, 0o600)
	testkit.WriteFile(t, dir, "ca.pem", other.PEM()) // kubeconfig() wrote the right CA: replace it
	if _, err := get(t, kc); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("server with a certificate of another CA: %v", err)
	}
}

// TestObjectDeepCopy: a copy shares no map or slice with the original.
func TestObjectDeepCopy(t *testing.T) {
	var o Object
	if err := json.Unmarshal([]byte(`{"metadata":{"name":"a","labels":{"x":"1"}},"spec":{"ports":[{"n":1}]}}`), &o); err != nil {
		t.Fatal(err)
	}
	c := o.DeepCopy()
	c["metadata"].(map[string]any)["labels"].(map[string]any)["x"] = "2"
	c["spec"].(map[string]any)["ports"].([]any)[0].(map[string]any)["n"] = 2
	if o["metadata"].(map[string]any)["labels"].(map[string]any)["x"] != "1" || o["spec"].(map[string]any)["ports"].([]any)[0].(map[string]any)["n"] != float64(1) {
		t.Fatalf("copy shares with the original: %v", o)
	}
}
