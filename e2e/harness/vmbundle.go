package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// A VM set up only from a bundle of `ewgate vm-config` (or `istioctl x workload entry configure`,
// the same five files), the way Istio's VM packaging uses it: the istio-sidecar package makes its
// directories, the operator copies the files to fixed paths and systemd runs istio-start.sh
// (tools/packaging/common in istio/istio), which sources cluster.env and starts `pilot-agent
// proxy` with a few variables of its own. The script and pilot-agent name every path relative
// ("./etc/certs", "./etc/istio/config/mesh") and systemd starts them in "/"; here the agent's
// working directory plays "/", so the layout below is the VM's own with nothing written outside
// the VM's directory. Only /etc/hosts is read by absolute path (by the resolver): the agent runs
// in a private mount namespace with the VM's hosts file bind-mounted over it.
const (
	bundleClusterEnv = "var/lib/istio/envoy/cluster.env"    // ISTIO_CLUSTER_CONFIG's default
	bundleMesh       = "etc/istio/config/mesh"              // pilot-agent --meshConfig's default
	bundleRoot       = "etc/certs/root-cert.pem"            // istioctl's layout: PROV_CERT/root-cert.pem
	bundleToken      = "var/run/secrets/tokens/istio-token" // pilot-agent's token path
	bundleHosts      = "etc/hosts"                          // /etc/hosts + the bundle's hosts
)

// layOutBundle copies the bundle into the VM's directory and returns the agent's environment
// and PROXY_CONFIG as istio-start.sh makes them, and the bind mount of the hosts file; it fills
// vm.Opts, vm.CertsDir and vm.RootFile from the bundle. root-cert.pem goes where cluster.env's
// XDS_ROOT_CA names it (docs/vm-onboarding.md), or to /etc/certs as Istio's VM docs say.
//
// Where this differs from a VM of its own (startVM adds the first two): DISABLE_ENVOY (no
// Envoy here), statusPort in PROXY_CONFIG (many VMs on one machine), and DNS_PROXY_ADDR on a
// free loopback port when the bundle turns DNS capture on (the agent's default localhost:15053
// would collide between VMs too).
func (vm *VM) layOutBundle(bundle string) (env []string, proxyConfig map[string]any, binds []Bind, err error) {
	files := map[string][]byte{}
	for _, name := range []string{"cluster.env", "mesh.yaml", "root-cert.pem", "istio-token", "hosts"} {
		if files[name], err = os.ReadFile(filepath.Join(bundle, name)); err != nil {
			return nil, nil, nil, fmt.Errorf("harness: bundle: %w", err)
		}
	}
	vars, err := ParseEnvFile(files["cluster.env"])
	if err != nil {
		return nil, nil, nil, fmt.Errorf("harness: bundle cluster.env: %w", err)
	}
	root := bundleRoot
	if p := vars["XDS_ROOT_CA"]; p != "" {
		root = p
	}
	if p := vars["CA_ROOT_CA"]; p != "" && filepath.Clean(p) != filepath.Clean(root) {
		return nil, nil, nil, fmt.Errorf("harness: bundle cluster.env: XDS_ROOT_CA %s and CA_ROOT_CA %s differ; it has one root-cert.pem", root, p)
	}
	if filepath.IsAbs(root) {
		return nil, nil, nil, fmt.Errorf("harness: bundle cluster.env: XDS_ROOT_CA %s is absolute: the VM would use the machine's file", root)
	}
	vm.RootFile = filepath.Join(vm.Dir, root)
	// The operator appends the bundle's hosts to the VM's /etc/hosts (Istio's VM docs: cat hosts
	// >> /etc/hosts); the machine's file keeps localhost and the rest resolving.
	etcHosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("harness: %w", err)
	}
	if len(etcHosts) > 0 && !bytes.HasSuffix(etcHosts, []byte("\n")) {
		etcHosts = append(etcHosts, '\n')
	}
	// What the istio-sidecar package's postinst makes before the operator copies the bundle:
	// /var/lib/istio/{envoy,proxy,config}, /etc/istio -> /var/lib/istio, /etc/certs.
	for _, d := range []string{"var/lib/istio/envoy", "var/lib/istio/proxy", "var/lib/istio/config", "etc/certs"} {
		if err := os.MkdirAll(filepath.Join(vm.Dir, d), 0o755); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := os.Symlink("../var/lib/istio", filepath.Join(vm.Dir, "etc/istio")); err != nil {
		return nil, nil, nil, err
	}
	for name, b := range map[string][]byte{
		bundleClusterEnv: files["cluster.env"], bundleMesh: files["mesh.yaml"], root: files["root-cert.pem"],
		bundleToken: files["istio-token"], bundleHosts: append(etcHosts, files["hosts"]...),
	} {
		mode := os.FileMode(0o644)
		if name == bundleToken {
			mode = 0o600
		}
		if err := writeFile(filepath.Join(vm.Dir, name), b, mode); err != nil {
			return nil, nil, nil, err
		}
	}
	if vars["ISTIO_META_DNS_CAPTURE"] == "true" {
		port, err := FreePort()
		if err != nil {
			return nil, nil, nil, err
		}
		vars["DNS_PROXY_ADDR"] = fmt.Sprintf("127.0.0.1:%d", port)
	}
	if env, err = vm.startScriptEnv(vars); err != nil {
		return nil, nil, nil, err
	}
	svc := vars["ISTIO_SERVICE"]
	if svc == "" {
		svc = "rawvm"
	}
	// istio-start.sh's PROXY_CONFIG when the environment has none; pilot-agent applies it over
	// mesh.yaml's defaultConfig, field by field.
	proxyConfig = map[string]any{"serviceCluster": svc, "controlPlaneAuthPolicy": "MUTUAL_TLS"}
	return env, proxyConfig, []Bind{{Source: filepath.Join(vm.Dir, bundleHosts), Target: "/etc/hosts"}}, nil
}

// startScriptEnv is what istio-start.sh exports to pilot-agent: cluster.env (sourced with
// set -a), PROV_CERT and OUTPUT_CERTS (./etc/certs unless cluster.env set them), CA_ADDR
// (istiod.<ISTIO_SYSTEM_NAMESPACE>.svc:15012 unless set), and on the agent's command line
// INSTANCE_IP=$ISTIO_SVC_IP, POD_NAME=$(hostname -s) (here the VM's Name) and
// POD_NAMESPACE=$ISTIO_NAMESPACE. It also fills vm.Opts from the result.
func (vm *VM) startScriptEnv(vars map[string]string) ([]string, error) {
	def := func(k, v string) {
		if _, ok := vars[k]; !ok {
			vars[k] = v
		}
	}
	def("PROV_CERT", "./etc/certs")
	def("OUTPUT_CERTS", "./etc/certs")
	if vars["CA_ADDR"] == "" {
		sys := vars["ISTIO_SYSTEM_NAMESPACE"]
		if sys == "" {
			sys = "istio-system"
		}
		vars["CA_ADDR"] = "istiod." + sys + ".svc:15012"
	}
	if vars["ISTIO_SVC_IP"] == "" {
		// The script would take the machine's first address (hostname --all-ip-addresses).
		return nil, errors.New("harness: bundle cluster.env has no ISTIO_SVC_IP: make it with --internal-ip")
	}
	vars["INSTANCE_IP"] = vars["ISTIO_SVC_IP"]
	vars["POD_NAME"] = vm.Opts.Name
	vars["POD_NAMESPACE"] = vars["ISTIO_NAMESPACE"]
	if vars["POD_NAMESPACE"] == "" {
		vars["POD_NAMESPACE"] = "default"
	}
	for _, k := range []string{"PROV_CERT", "OUTPUT_CERTS"} {
		if p := vars[k]; filepath.IsAbs(p) {
			return nil, fmt.Errorf("harness: %s=%s is absolute: the VM would use the machine's files", k, p)
		}
	}
	vm.CertsDir = filepath.Join(vm.Dir, vars["OUTPUT_CERTS"])
	o := &vm.Opts
	o.Namespace, o.ServiceAccount, o.Group = vars["POD_NAMESPACE"], vars["SERVICE_ACCOUNT"], vars["ISTIO_META_AUTO_REGISTER_GROUP"]
	o.IP, o.Network, o.ClusterID = vars["INSTANCE_IP"], vars["ISTIO_META_NETWORK"], vars["ISTIO_META_CLUSTER_ID"]
	o.CAAddr, o.SAN = vars["CA_ADDR"], vars["ISTIOD_SAN"]
	env := make([]string, 0, len(vars))
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env, nil
}

// ParseEnvFile reads KEY=VALUE lines as bash reads them when istio-start.sh sources cluster.env
// (and as systemd reads an EnvironmentFile): blank lines and # comments skipped, an optional
// "export ", VALUE one shell word of unquoted, '...' and "..." parts (backslash escapes outside
// single quotes). Anything a shell would expand or run ($, `, a second word) is an error, so a
// file the two would read differently fails here instead of passing.
func ParseEnvFile(b []byte) (map[string]string, error) {
	vars := map[string]string{}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok || !validEnvName(k) {
			return nil, fmt.Errorf("line %d: not NAME=value: %q", n+1, line)
		}
		val, err := shellWord(v)
		if err != nil {
			return nil, fmt.Errorf("line %d (%s): %w", n+1, k, err)
		}
		vars[k] = val
	}
	return vars, nil
}

func validEnvName(k string) bool {
	for i, r := range k {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return k != ""
}

// shellWord unquotes one shell word.
func shellWord(s string) (string, error) {
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return "", errors.New("unterminated '")
			}
			out.WriteString(s[i+1 : i+1+end])
			i += 1 + end
		case '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				switch {
				case s[i] == '$' || s[i] == '`':
					return "", fmt.Errorf("expansion (%c) inside \"...\" is not supported", s[i])
				case s[i] == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\", s[i+1]) >= 0:
					i++
				}
				out.WriteByte(s[i])
			}
			if i >= len(s) {
				return "", errors.New(`unterminated "`)
			}
		case '\\':
			if i+1 == len(s) {
				return "", errors.New("trailing backslash")
			}
			i++
			out.WriteByte(s[i])
		case ' ', '\t':
			if rest := strings.TrimSpace(s[i:]); rest != "" && !strings.HasPrefix(rest, "#") {
				return "", fmt.Errorf("more than one word: %q", s)
			}
			return out.String(), nil
		case '$', '`', ';', '&', '|', '<', '>', '(', ')':
			return "", fmt.Errorf("shell syntax %q outside quotes", c)
		default:
			out.WriteByte(c)
		}
	}
	return out.String(), nil
}
