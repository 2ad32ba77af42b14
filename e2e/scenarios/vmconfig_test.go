package scenarios

// ewgate vm-config against the real apiserver: the WorkloadGroup read from it, the token a real
// TokenRequest (audience istio-ca, the requested duration) that the apiserver itself accepts in
// a TokenReview, the mesh root taken from istiod's istio-ca-root-cert ConfigMap and bundled with
// ewgate's serving CA, and the token never printed.

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

func TestVMConfigCluster(t *testing.T) {
	ctx := harness.Context(t, 2*time.Minute)
	api := cluster.API
	ns := cluster.Namespace(t, "vmconfig")
	if _, err := api.CreateServiceAccount(ctx, ns, "web-sa"); err != nil {
		t.Fatal(err)
	}
	if _, err := api.CreateWorkloadGroup(ctx, ns, "web", harness.WorkloadGroupSpec{
		ServiceAccount: "web-sa", Network: "vmnet", Labels: map[string]string{"app": "web"},
	}); err != nil {
		t.Fatal(err)
	}
	meshRoot, err := cluster.Istiod.RootCert(ctx, api, ns) // waits until istiod wrote it
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serving, err := harness.NewControlServingCert(dir, "istiod.istio-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	servingCA := filepath.Join(dir, "serving-ca.pem")
	if err := os.WriteFile(servingCA, serving.CA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "bundle")
	args := []string{"vm-config", "--kubeconfig", api.Kubeconfig, "--group", ns + "/web", "--out", out,
		"--ewgate-address", "127.0.0.1", "--internal-ip", "127.0.0.9", "--cluster-id", "cluster1",
		"--serving-ca", servingCA, "--token-duration", "2h"}
	cmd := exec.CommandContext(ctx, harness.EwgateBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ewgate vm-config: %v\n%s", err, stderr.String())
	}

	token, err := os.ReadFile(filepath.Join(out, "istio-token"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stdout.String()+stderr.String(), strings.TrimSpace(string(token))) {
		t.Fatal("vm-config printed the token")
	}
	st, err := os.Stat(filepath.Join(out, "istio-token"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("istio-token: %v, mode %v; want 0600", err, st.Mode().Perm())
	}
	claims, err := harness.JWTClaims(string(token))
	if err != nil {
		t.Fatal(err)
	}
	if claims["sub"] != "system:serviceaccount:"+ns+":web-sa" {
		t.Errorf("token sub %v", claims["sub"])
	}
	if aud, _ := claims["aud"].([]any); len(aud) != 1 || aud[0] != "istio-ca" {
		t.Errorf("token aud %v, want [istio-ca]", claims["aud"])
	}
	exp, _ := claims["exp"].(json.Number).Int64()
	iat, _ := claims["iat"].(json.Number).Int64()
	if d := time.Duration(exp-iat) * time.Second; d != 2*time.Hour {
		t.Errorf("token lifetime %v, want the requested 2h", d)
	}
	review, err := api.ReviewToken(ctx, string(token), "istio-ca")
	if err != nil {
		t.Fatal(err)
	}
	if !review.Authenticated || review.User.Username != "system:serviceaccount:"+ns+":web-sa" {
		t.Errorf("the apiserver's TokenReview of the bundle's token: %+v", review)
	}

	root, err := os.ReadFile(filepath.Join(out, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(root, bytes.TrimSpace(meshRoot)) || !bytes.Contains(root, bytes.TrimSpace(serving.CA.CertPEM)) {
		t.Error("root-cert.pem does not hold both istiod's root and ewgate's serving CA")
	}
	env, err := os.ReadFile(filepath.Join(out, "cluster.env"))
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.ContainsAll(string(env), "ISTIO_META_AUTO_REGISTER_GROUP='web'", "POD_NAMESPACE='"+ns+"'",
		"SERVICE_ACCOUNT='web-sa'", "ISTIO_META_NETWORK='vmnet'", "ISTIO_META_CLUSTER_ID='cluster1'",
		"INSTANCE_IP='127.0.0.9'", "CA_ADDR='istiod.istio-system.svc:15012'"); err != nil {
		t.Errorf("cluster.env: %v\n%s", err, env)
	}
	hosts, _ := os.ReadFile(filepath.Join(out, "hosts"))
	if string(hosts) != "127.0.0.1 istiod.istio-system.svc\n" {
		t.Errorf("hosts %q", hosts)
	}

	// A second run does not replace the bundle.
	again := exec.CommandContext(ctx, harness.EwgateBinary(t), args...)
	if b, err := again.CombinedOutput(); err == nil || !strings.Contains(string(b), "--overwrite") {
		t.Errorf("second run: %v, %s; want a refusal naming --overwrite", err, b)
	}
	// A group that does not exist is named in the error.
	missing := append([]string{}, args...)
	missing[4] = ns + "/nope"
	missing[6] = filepath.Join(dir, "other")
	if b, err := exec.CommandContext(ctx, harness.EwgateBinary(t), missing...).CombinedOutput(); err == nil || !strings.Contains(string(b), ns+"/nope") {
		t.Errorf("missing group: %v, %s", err, b)
	}
}
