package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// TestVMConfigStandaloneGroupPerCluster: with a store per cluster, the same namespace/name can
// be a group in two clusters with different templates. vm-config takes the group of the VM's
// cluster (that of the --issuer whose token it signs), and refuses a group that only another
// cluster has, naming both clusters (it used to take whichever entry came last). The first run
// signs with cluster-a's issuer while cluster-b's key set does not exist yet: it writes the
// bundle and says so (it used to stop on the whole config's load).
func TestVMConfigStandaloneGroupPerCluster(t *testing.T) {
	dir := t.TempDir()
	servingCA := filepath.Join(dir, "serving-ca.pem")
	serving := testkit.NewCA(t, "serving")
	if err := os.WriteFile(servingCA, serving.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := serving.Server(t, defaultSAN).WriteFiles(t, dir, "tls")
	for _, k := range []string{"a.kubeconfig", "b.kubeconfig"} {
		if err := os.WriteFile(filepath.Join(dir, k), []byte("apiVersion: v1\nkind: Config\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := `
listeners: [{name: mesh, kind: mesh, address: 127.0.0.1:0}]
control_plane:
  address: 127.0.0.1:0
  ca: {data_dir: ` + filepath.Join(dir, "ca") + `}
authn:
  issuers:
    - issuer: https://ewgate.local/vm-tokens
      cluster: cluster-a
      jwks_file: ` + filepath.Join(dir, "vm-tokens", "vm-token-jwks.json") + `
    - issuer: https://ewgate.local/vm-tokens-b
      cluster: cluster-b
      jwks_file: ` + filepath.Join(dir, "vm-tokens-b", "vm-token-jwks.json") + `
control:
  address: 127.0.0.1:0
  tls: {cert_file: ` + certFile + `, key_file: ` + keyFile + `}
  upstreams:
    - {cluster: cluster-a, builtin: true}
    - {cluster: cluster-b, address: '127.0.0.1:15012', ca_file: ` + servingCA + `, server_name: istiod.cluster-b.test}
registrar: {}
kubernetes:
  clusters:
    - {cluster: cluster-a, kubeconfig: ` + filepath.Join(dir, "a.kubeconfig") + `}
    - {cluster: cluster-b, kubeconfig: ` + filepath.Join(dir, "b.kubeconfig") + `}
workload_groups:
  - cluster: cluster-a
    metadata: {name: web, namespace: vms}
    spec: {template: {serviceAccount: web-a}}
  - cluster: cluster-b
    metadata: {name: web, namespace: vms}
    spec: {template: {serviceAccount: web-b}}
  - cluster: cluster-b
    metadata: {name: db, namespace: vms}
    spec: {template: {serviceAccount: db}}
`
	cfgPath := filepath.Join(dir, "ewgate.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		group, issuer string // issuer: empty for the default (cluster-a's)
		sa, cluster   string // the bundle's; empty: refused
		refusal       string
		note          string // said on stderr; the first run: cluster-b's key set is not written yet
	}{
		{group: "vms/web", sa: "web-a", cluster: "cluster-a",
			note: "note: the key sets of https://ewgate.local/vm-tokens-b do not exist yet: run vm-config with each as --issuer"},
		{group: "vms/web", issuer: "https://ewgate.local/vm-tokens-b", sa: "web-b", cluster: "cluster-b"},
		{group: "vms/db", refusal: "workload_groups vms/db is a group of cluster cluster-b, not of the VM's cluster cluster-a"},
		{group: "vms/db", issuer: "https://ewgate.local/vm-tokens-b", sa: "db", cluster: "cluster-b"},
	} {
		out := filepath.Join(dir, "bundle", string(rune('0'+i)))
		args := []string{"vm-config", "--config", cfgPath, "--group", tc.group, "--out", out, "--ewgate-address", "127.0.0.1",
			"--internal-ip", "10.0.0.5", "--serving-ca", servingCA}
		if tc.issuer != "" {
			args = append(args, "--issuer", tc.issuer)
		}
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		if tc.refusal != "" {
			if code != 1 || !strings.Contains(stderr.String(), tc.refusal) {
				t.Errorf("%s %s: exit %d, %s; want 1 and %q", tc.group, tc.issuer, code, stderr.String(), tc.refusal)
			}
			continue
		}
		if code != 0 {
			t.Fatalf("%s %s: exit %d: %s", tc.group, tc.issuer, code, stderr.String())
		}
		if (tc.note == "") != (stderr.Len() == 0) || !strings.Contains(stderr.String(), tc.note) {
			t.Errorf("%s %s: stderr %q; want %q", tc.group, tc.issuer, stderr.String(), tc.note)
		}
		env, _ := os.ReadFile(filepath.Join(out, "cluster.env"))
		if e := envFile(t, env); e["SERVICE_ACCOUNT"] != tc.sa || e["ISTIO_META_CLUSTER_ID"] != tc.cluster {
			t.Errorf("%s %s: cluster.env has SERVICE_ACCOUNT %q, ISTIO_META_CLUSTER_ID %q; want %s of %s", tc.group, tc.issuer,
				e["SERVICE_ACCOUNT"], e["ISTIO_META_CLUSTER_ID"], tc.sa, tc.cluster)
		}
	}
}
