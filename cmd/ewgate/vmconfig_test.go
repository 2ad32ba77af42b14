package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/meshca"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

func testBundle(t *testing.T) *bundle {
	root, err := rootBundle(testkit.NewCA(t, "ewgate 15012").PEM(), testkit.NewCA(t, "mesh root").PEM())
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{
		Group: registrar.WorkloadGroup{
			ObjectMeta: registrar.ObjectMeta{Name: "web", Namespace: "vms"},
			Spec: registrar.WorkloadGroupSpec{
				Metadata: registrar.GroupMetadata{Labels: map[string]string{"app": "web"}},
				Template: registrar.WorkloadEntrySpec{ServiceAccount: "web-sa", Network: "tmpl-net"},
			},
		},
		ClusterID: "cluster1", Network: "vmnet", TrustDomain: "cluster.local", SAN: defaultSAN,
		Address: "192.0.2.10", Port: 15012, InternalIP: "10.0.0.5", Root: root, Token: "header.payload.sig",
	}
}

// envFile parses cluster.env (KEY='value' lines, as istioctl writes them).
func envFile(t *testing.T, b []byte) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || len(v) < 2 || v[0] != '\'' || v[len(v)-1] != '\'' {
			t.Fatalf("cluster.env line %q is not KEY='value'", line)
		}
		env[k] = v[1 : len(v)-1]
	}
	return env
}

func TestVMBundleFormat(t *testing.T) {
	for _, tc := range []struct {
		name      string
		edit      func(*bundle)
		discovery string
		hosts     string
		ip        string
		inbound   string
	}{
		{name: "ip address, internal ip", discovery: "istiod.istio-system.svc:15012", hosts: "192.0.2.10 istiod.istio-system.svc\n", ip: "10.0.0.5", inbound: "*"},
		{name: "dns name, external ip", edit: func(b *bundle) { b.Address, b.InternalIP, b.ExternalIP = "ewgate.example.com", "", "203.0.113.7" },
			discovery: "ewgate.example.com:15012", ip: "203.0.113.7", inbound: "*"},
		{name: "template ports", edit: func(b *bundle) {
			b.Group.Spec.Template.Ports = map[string]uint32{"http": 8080, "grpc": 7070, "admin": 9090}
		},
			discovery: "istiod.istio-system.svc:15012", ip: "10.0.0.5", inbound: "7070,8080,9090"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := testBundle(t)
			if tc.edit != nil {
				tc.edit(b)
			}
			files, err := b.files()
			if err != nil {
				t.Fatal(err)
			}
			env := envFile(t, files["cluster.env"])
			want := map[string]string{
				"ISTIO_META_AUTO_REGISTER_GROUP": "web", "ISTIO_META_WORKLOAD_NAME": "web",
				"ISTIO_META_CLUSTER_ID": "cluster1", "ISTIO_META_NETWORK": "vmnet",
				"POD_NAMESPACE": "vms", "ISTIO_NAMESPACE": "vms", "SERVICE_ACCOUNT": "web-sa",
				"CANONICAL_SERVICE": "web", "CANONICAL_REVISION": "latest", "TRUST_DOMAIN": "cluster.local",
				"ISTIO_METAJSON_LABELS": `{"app":"web"}`, "ISTIO_SVC_IP": tc.ip, "INSTANCE_IP": tc.ip,
				"CA_ADDR": tc.discovery, "ISTIOD_SAN": "istiod.istio-system.svc",
				// As istioctl: the group's ports are captured, ssh and the agent's ports never.
				"ISTIO_INBOUND_PORTS": tc.inbound, "ISTIO_LOCAL_EXCLUDE_PORTS": "22,15090,15021,15020",
				// The roots the agent verifies ewgate with, outside ./etc/certs (OUTPUT_CERTS):
				// the agent overwrites root-cert.pem there with the mesh root alone.
				"XDS_ROOT_CA": "./etc/istio/config/root-cert.pem", "CA_ROOT_CA": "./etc/istio/config/root-cert.pem",
			}
			for k, v := range want {
				if env[k] != v {
					t.Errorf("cluster.env %s=%q, want %q", k, env[k], v)
				}
			}
			for _, k := range []string{"OUTPUT_CERTS", "PROV_CERT"} {
				// Away from ./etc/certs, the agent would serve the bundle's root there as the
				// workload trust root (and deadlock without Envoy): istio-start.sh's default stays.
				if v, ok := env[k]; ok {
					t.Errorf("cluster.env sets %s=%q", k, v)
				}
			}
			var mesh struct {
				DefaultConfig struct {
					DiscoveryAddress string            `yaml:"discoveryAddress"`
					ProxyMetadata    map[string]string `yaml:"proxyMetadata"`
				} `yaml:"defaultConfig"`
			}
			if err := yaml.Unmarshal(files["mesh.yaml"], &mesh); err != nil {
				t.Fatalf("mesh.yaml: %v\n%s", err, files["mesh.yaml"])
			}
			if mesh.DefaultConfig.DiscoveryAddress != tc.discovery {
				t.Errorf("mesh.yaml discoveryAddress %q, want %q", mesh.DefaultConfig.DiscoveryAddress, tc.discovery)
			}
			if mesh.DefaultConfig.ProxyMetadata["ISTIO_META_AUTO_REGISTER_GROUP"] != "web" {
				t.Errorf("mesh.yaml proxyMetadata %v lacks the group", mesh.DefaultConfig.ProxyMetadata)
			}
			if tc.hosts != "" && string(files["hosts"]) != tc.hosts {
				t.Errorf("hosts %q, want %q", files["hosts"], tc.hosts)
			}
			if n := bytes.Count(files["root-cert.pem"], []byte("BEGIN CERTIFICATE")); n != 2 {
				t.Errorf("root-cert.pem holds %d certificates, want 2 (ewgate's serving CA and the mesh root)", n)
			}
		})
	}
}

func TestVMBundleWriteRefusesOverwrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bundle")
	files, err := testBundle(t).files()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeBundle(dir, files, false); err != nil {
		t.Fatal(err)
	}
	for _, name := range bundleFiles {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if want := os.FileMode(0o644); name == "istio-token" && st.Mode().Perm() != 0o600 || name != "istio-token" && st.Mode().Perm() != want {
			t.Errorf("%s mode %v", name, st.Mode().Perm())
		}
	}
	if err := writeBundle(dir, files, false); err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("second write without overwrite: %v, want a refusal naming --overwrite", err)
	}
	if err := writeBundle(dir, files, true); err != nil {
		t.Fatalf("with overwrite: %v", err)
	}
}

func TestVMConfigFlags(t *testing.T) {
	var stderr bytes.Buffer
	if code := run([]string{"vm-config", "--group", "web"}, &bytes.Buffer{}, &stderr); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, want := range []string{"--kubeconfig", "namespace/name", "--out", "--ewgate-address", "--serving-ca"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("usage error %q does not mention %s", stderr.String(), want)
		}
	}
}

// TestVMConfigStandalone runs the command against a standalone config before ewgate ever ran
// on it: the config already names the VM-token JWKS in its issuer entry (without which it is
// refused: the control endpoint needs an issuer), and neither that key nor the built-in CA exist
// yet. The command creates both as `ewgate serve` would find them; the group comes from
// workload_groups, the cluster from the builtin upstream, the mesh root from the new CA, and the
// token is accepted by ewgate's own authn through the documented issuer entry.
func TestVMConfigStandalone(t *testing.T) {
	dir := t.TempDir()
	keyDir := filepath.Join(dir, "vm-tokens")
	servingCA := filepath.Join(dir, "serving-ca.pem")
	serving := testkit.NewCA(t, "serving")
	if err := os.WriteFile(servingCA, serving.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := serving.Server(t, defaultSAN).WriteFiles(t, dir, "tls")
	cfg := `
listeners: [{name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}]
xds: {node: {network: vmnet}}
control_plane:
  workload_entries_dir: ` + filepath.Join(dir, "store") + `
  ca: {data_dir: ` + filepath.Join(dir, "ca") + `}
authn:
  issuers:
    - issuer: https://ewgate.local/vm-tokens
      cluster: cluster1
      jwks_file: ` + filepath.Join(keyDir, "vm-token-jwks.json") + `
control:
  address: 127.0.0.1:0
  tls: {cert_file: ` + certFile + `, key_file: ` + keyFile + `}
  upstreams: [{cluster: cluster1, builtin: true}]
registrar: {}
workload_groups:
  - metadata: {name: web, namespace: vms}
    spec:
      metadata: {labels: {app: web}}
      template: {serviceAccount: web}
`
	cfgPath := filepath.Join(dir, "ewgate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "bundle")
	args := []string{"vm-config", "--config", cfgPath, "--group", "vms/web", "--out", out, "--ewgate-address", "127.0.0.1",
		"--internal-ip", "10.0.0.5", "--serving-ca", servingCA}
	var stdout, stderr bytes.Buffer
	// A --cluster-id the gateway refuses for these tokens, and a key directory other than the
	// one the config reads the JWKS from, are refused before anything is written (before, the
	// key went to the flag's default directory and the bundle named any cluster).
	for _, tc := range []struct{ extra, want string }{
		{"--cluster-id=cluster2", "--cluster-id cluster2: ewgate refuses it for tokens of https://ewgate.local/vm-tokens (" + cfgPath + " accepts cluster cluster1)"},
		{"--token-key-dir=" + filepath.Join(dir, "elsewhere"), "reads its keys from " + filepath.Join(keyDir, "vm-token-jwks.json")},
	} {
		stderr.Reset()
		if code := run(append(args, tc.extra), &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), tc.want) {
			t.Fatalf("%s: exit %d, %s; want 1 and %q", tc.extra, code, stderr.String(), tc.want)
		}
		if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a bundle was written (%v)", tc.extra, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "elsewhere")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a key was written outside the config's key directory")
	}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	token, err := os.ReadFile(filepath.Join(out, "istio-token"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stdout.String()+stderr.String(), string(token)) {
		t.Fatal("the token was printed")
	}
	if st, err := os.Stat(filepath.Join(keyDir, vmTokenKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the signing key is not in the config's key directory %s: %v", keyDir, err)
	}
	env, _ := os.ReadFile(filepath.Join(out, "cluster.env"))
	if e := envFile(t, env); e["ISTIO_META_CLUSTER_ID"] != "cluster1" || e["ISTIO_META_NETWORK"] != "vmnet" || e["SERVICE_ACCOUNT"] != "web" {
		t.Errorf("cluster.env: %s", env)
	}
	if code := run(args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "--overwrite") {
		t.Errorf("second run: exit %d, %s; want a refusal", code, stderr.String())
	}
	// The CA it created is the one serve opens, and the bundle carries its root.
	a, err := meshca.Open(meshca.Options{DataDir: filepath.Join(dir, "ca")})
	if err != nil {
		t.Fatalf("the CA vm-config created does not open as serve opens it: %v", err)
	}
	root, _ := os.ReadFile(filepath.Join(out, "root-cert.pem"))
	if !bytes.Contains(root, []byte(a.RootPEM())) {
		t.Errorf("root-cert.pem lacks the built-in CA's root:\n%s", root)
	}
	if st, err := os.Stat(filepath.Join(dir, "ca", meshca.KeyFileName)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("CA key: %v %v, want mode 0600", err, st)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := authn.New(ctx, authn.Config{Issuers: []authn.IssuerConfig{{
		Issuer: defaultVMIssuer, Cluster: "cluster1", JWKSFile: filepath.Join(keyDir, "vm-token-jwks.json"),
	}}}, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	id, err := v.VerifyToken(ctx, string(token))
	if err != nil {
		t.Fatalf("ewgate's authn refuses the token vm-config signed: %v", err)
	}
	if id.Namespace != "vms" || id.ServiceAccount != "web" || id.Cluster != "cluster1" {
		t.Errorf("identity %+v", id)
	}
	if d := time.Until(id.ExpiresAt); d < 55*time.Minute || d > time.Hour+time.Minute {
		t.Errorf("token expires in %v, want about 1h", d)
	}
}

// The bundle hands the VM's agent the group's probe as Istio reads it: the group comes from the
// Kubernetes store (JSON, Istio's field names) and the agent decodes mesh.yaml's
// defaultConfig.readinessProbe as istio.networking.v1alpha3.ReadinessProbe. Every method the API
// has must survive, or the agent gets a probe without one (its prober is then nil).
func TestVMBundleCarriesTheGroupProbe(t *testing.T) {
	for name, probe := range map[string]string{
		"httpGet with headers": `{"periodSeconds": 1, "failureThreshold": 2, "httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS", "httpHeaders": [{"name": "Host", "value": "web.local"}]}}`,
		"tcpSocket":            `{"timeoutSeconds": 2, "tcpSocket": {"port": 7070}}`,
		"exec":                 `{"initialDelaySeconds": 3, "exec": {"command": ["/bin/check", "-q"]}}`,
		"grpc":                 `{"successThreshold": 2, "grpc": {"port": 7070, "service": "web.v1.Web"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			want := &networkingv1alpha3.ReadinessProbe{}
			if err := protojson.Unmarshal([]byte(probe), want); err != nil {
				t.Fatal(err)
			}
			b := testBundle(t)
			if err := json.Unmarshal([]byte(`{"probe": `+probe+`}`), &b.Group.Spec); err != nil {
				t.Fatal(err)
			}
			files, err := b.files()
			if err != nil {
				t.Fatal(err)
			}
			var mesh map[string]any
			if err := yaml.Unmarshal(files["mesh.yaml"], &mesh); err != nil {
				t.Fatal(err)
			}
			dc, _ := mesh["defaultConfig"].(map[string]any)
			raw, err := json.Marshal(dc["readinessProbe"])
			if err != nil {
				t.Fatal(err)
			}
			got := &networkingv1alpha3.ReadinessProbe{}
			if err := protojson.Unmarshal(raw, got); err != nil {
				t.Fatalf("mesh.yaml readinessProbe %s: %v", raw, err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("the agent gets readinessProbe %s; the group says %s", raw, probe)
			}
		})
	}
}

// A probe without a method (or with two) is refused: the agent would crash on its first check.
func TestVMBundleRefusesAProbeWithoutOneMethod(t *testing.T) {
	for name, probe := range map[string]*registrar.ReadinessProbe{
		"none": {PeriodSeconds: 1},
		"two":  {TCPSocket: &registrar.TCPAction{Port: 1}, GRPC: &registrar.GRPCAction{Port: 1}},
	} {
		b := testBundle(t)
		b.Group.Spec.Probe = probe
		if _, err := b.files(); err == nil || !strings.Contains(err.Error(), "spec.probe has") {
			t.Errorf("%s: files() = %v; want the probe refused", name, err)
		}
	}
}
