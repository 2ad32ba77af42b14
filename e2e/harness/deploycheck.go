package harness

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// podPath is a file path a deployed config names (/etc/..., /var/...).
var podPath = regexp.MustCompile(`/(?:etc|var)/[A-Za-z0-9._/-]+`)

// CheckDeployedConfig runs the real `ewgate check` on a config as a Deployment ships it (a
// ConfigMap's, an overlay's or a chart's rendering): every file it names must lie under one of
// the Deployment's mounts (each path that does not is an error of t), and is created under a
// temporary root first, with a real CA and a serving certificate for istiod.istio-system.svc
// where it names certificates and keys.
func CheckDeployedConfig(t testing.TB, cfg string, mounts []string) {
	t.Helper()
	files := deployedFiles(t)
	root := t.TempDir()
	for _, p := range podPath.FindAllString(cfg, -1) {
		if !slices.ContainsFunc(mounts, func(m string) bool { return strings.HasPrefix(p, m+"/") }) {
			t.Errorf("the config names %s, which no volume of the Deployment provides (mounts: %v)", p, mounts)
		}
		content, ok := files[filepath.Base(p)]
		if !ok {
			content = []byte("placeholder\n")
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), content, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	local := podPath.ReplaceAllStringFunc(cfg, func(p string) string { return filepath.Join(root, p) })
	path := filepath.Join(root, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(local), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(EwgateBinary(t), "check", "--config", path).CombinedOutput()
	if err != nil {
		t.Fatalf("ewgate check on the deployed config: %v\n%s\nconfig:\n%s", err, out, cfg)
	}
	t.Logf("ewgate check: %s", strings.TrimSpace(strings.ReplaceAll(string(out), root, "")))
}

// deployedFiles are the contents of the files a deployed config names, by base name: a CA and a
// serving certificate it issued.
func deployedFiles(t testing.TB) map[string][]byte {
	t.Helper()
	ca, err := NewCA("deployed config test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, key, err := ca.Issue(LeafOptions{CommonName: ControlSAN, DNSNames: []string{ControlSAN}})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"tls.crt":       leaf,
		"tls.key":       key,
		"ca.crt":        ca.CertPEM,
		"ca.key":        pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		"root-cert.pem": ca.CertPEM,
	}
}
