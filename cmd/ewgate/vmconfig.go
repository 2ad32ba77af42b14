package main

// ewgate vm-config: the files a VM's pilot-agent needs to join the mesh through ewgate, in the
// format `istioctl x workload entry configure` writes (cluster.env, mesh.yaml, root-cert.pem,
// istio-token, hosts), pointed at ewgate's control port instead of istiod. The WorkloadGroup and
// the token come from a cluster (vmconfig_kube.go) or, standalone, from ewgate's own config and
// a key ewgate keeps for signing VM tokens (vmconfig_token.go). docs/vm-onboarding.md.

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/registrar"
)

// The files of a bundle; istio-token is the only secret (0600).
var bundleFiles = []string{"cluster.env", "mesh.yaml", "root-cert.pem", "istio-token", "hosts"}

const defaultSAN = "istiod.istio-system.svc"

// vmFlags are the flags of ewgate vm-config.
type vmFlags struct {
	group      string // namespace/name
	kubeconfig string // cluster mode
	config     string // standalone mode: ewgate's config file
	out        string
	overwrite  bool
	address    string // where the VM reaches ewgate's 15012 (IP or DNS name)
	port       int
	internalIP string
	externalIP string
	network    string
	clusterID  string
	meshID     string
	servingCA  string // CA of ewgate's 15012 serving certificate
	meshRoot   string // mesh root; cluster mode: default from istio-ca-root-cert
	san        string
	duration   time.Duration
	keyDir     string // standalone: where the VM-token signing key lives
	issuer     string // standalone: iss of the tokens ewgate signs
}

func parseVMFlags(args []string, stdout, stderr io.Writer) (*vmFlags, error) {
	f := &vmFlags{}
	fs := flag.NewFlagSet("ewgate vm-config", flag.ContinueOnError)
	fs.StringVar(&f.group, "group", "", "the WorkloadGroup the VM joins, namespace/name (required)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "cluster mode: kubeconfig of the cluster holding the group (TokenRequest, group read)")
	fs.StringVar(&f.config, "config", "", "standalone mode: ewgate's config file (workload_groups, CA, cluster); the token is signed by ewgate's key")
	fs.StringVar(&f.out, "out", "", "output directory (required)")
	fs.BoolVar(&f.overwrite, "overwrite", false, "replace an existing bundle in --out")
	fs.StringVar(&f.address, "ewgate-address", "", "address of ewgate's control port as the VM reaches it: an IP (written to hosts) or a DNS name (required)")
	fs.IntVar(&f.port, "port", 15012, "ewgate's control port")
	fs.StringVar(&f.internalIP, "internal-ip", "", "the VM's address inside its network (ISTIO_SVC_IP, the WorkloadEntry address)")
	fs.StringVar(&f.externalIP, "external-ip", "", "the VM's address as others reach it (behind NAT); used when --internal-ip is not given")
	fs.StringVar(&f.network, "network", "", "the VM's network (ISTIO_META_NETWORK); default: the group template's network")
	fs.StringVar(&f.clusterID, "cluster-id", "", "the cluster ewgate's config gives the token's issuer (ISTIO_META_CLUSTER_ID); default Kubernetes, or standalone the builtin upstream's cluster")
	fs.StringVar(&f.meshID, "mesh-id", "", "ISTIO_META_MESH_ID (default: none)")
	fs.StringVar(&f.servingCA, "serving-ca", "", "PEM CA of ewgate's 15012 serving certificate, added to root-cert.pem (required)")
	fs.StringVar(&f.meshRoot, "mesh-root", "", "PEM mesh root; default: the istio-ca-root-cert ConfigMap (cluster) or the built-in CA (standalone)")
	fs.StringVar(&f.san, "istiod-san", defaultSAN, "the name ewgate's serving certificate carries and the agent checks")
	fs.DurationVar(&f.duration, "token-duration", time.Hour, "validity of istio-token")
	fs.StringVar(&f.keyDir, "token-key-dir", "", "standalone: directory of the VM-token signing key (created on first use); default and only allowed value: the directory of the jwks_file the config's authn issuer for --issuer names")
	fs.StringVar(&f.issuer, "issuer", defaultVMIssuer, "standalone: the iss of the tokens ewgate signs (an authn.issuers entry must name it)")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return f, f.validate()
}

func (f *vmFlags) validate() error {
	var errs []error
	if (f.kubeconfig == "") == (f.config == "") {
		errs = append(errs, errors.New("exactly one of --kubeconfig (a cluster) or --config (standalone) is required"))
	}
	if ns, name, ok := strings.Cut(f.group, "/"); !ok || ns == "" || name == "" {
		errs = append(errs, fmt.Errorf("--group %q: want namespace/name", f.group))
	}
	if f.out == "" {
		errs = append(errs, errors.New("--out DIR is required"))
	}
	if f.address == "" {
		errs = append(errs, errors.New("--ewgate-address is required: ewgate's control address as the VM reaches it"))
	}
	if f.servingCA == "" {
		errs = append(errs, errors.New("--serving-ca is required: the CA of ewgate's 15012 serving certificate"))
	}
	for name, ip := range map[string]string{"--internal-ip": f.internalIP, "--external-ip": f.externalIP} {
		if ip != "" && net.ParseIP(ip) == nil {
			errs = append(errs, fmt.Errorf("%s %q is not an IP address", name, ip))
		}
	}
	if f.port < 1 || f.port > 65535 {
		errs = append(errs, fmt.Errorf("--port %d: want 1-65535", f.port))
	}
	if f.duration < 10*time.Minute {
		errs = append(errs, fmt.Errorf("--token-duration %s: at least 10m (the apiserver's minimum)", f.duration))
	}
	return errors.Join(errs...)
}

func (f *vmFlags) namespaceName() (string, string) {
	ns, name, _ := strings.Cut(f.group, "/")
	return ns, name
}

// bundle is what a VM needs; files renders it.
type bundle struct {
	Group       registrar.WorkloadGroup
	ClusterID   string
	Network     string
	MeshID      string
	TrustDomain string
	SAN         string
	Address     string // ewgate's control address as the VM reaches it
	Port        int
	InternalIP  string
	ExternalIP  string
	Root        []byte // ewgate's serving CA + the mesh root
	Token       string
	note        string // said to the operator after the files are written
}

// files renders the bundle as istioctl x workload entry configure does.
func (b *bundle) files() (map[string][]byte, error) {
	if p := b.Group.Spec.Probe; p != nil {
		if n := probeMethods(p); n != 1 {
			// pilot-agent takes the probe as it is and, without a method, crashes on its first
			// check (a nil prober); Istio's API allows exactly one.
			return nil, fmt.Errorf("vm-config: WorkloadGroup %s/%s: spec.probe has %d health check methods; want exactly one of httpGet, tcpSocket, exec, grpc",
				b.Group.Namespace, b.Group.Name, n)
		}
	}
	env := b.clusterEnv()
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var ce bytes.Buffer
	for _, k := range keys {
		fmt.Fprintf(&ce, "%s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`))
	}
	mesh := map[string]any{"defaultConfig": b.proxyConfig(env)}
	my, err := yaml.Marshal(mesh)
	if err != nil {
		return nil, err
	}
	hosts := "# ewgate vm-config: " + b.Address + " serves " + b.SAN + " (add to /etc/hosts)\n"
	if net.ParseIP(b.Address) != nil {
		hosts = b.Address + " " + b.SAN + "\n"
	}
	return map[string][]byte{
		"cluster.env":   ce.Bytes(),
		"mesh.yaml":     my,
		"root-cert.pem": b.Root,
		"istio-token":   []byte(b.Token),
		"hosts":         []byte(hosts),
	}, nil
}

// discovery is where the agent connects: the SAN when the hosts file maps it to ewgate's IP,
// else ewgate's DNS name.
func (b *bundle) discovery() string {
	host := b.SAN
	if net.ParseIP(b.Address) == nil {
		host = b.Address
	}
	return net.JoinHostPort(host, strconv.Itoa(b.Port))
}

func (b *bundle) clusterEnv() map[string]string {
	g := b.Group
	labels := map[string]string{}
	for k, v := range g.Spec.Template.Labels {
		labels[k] = v
	}
	for k, v := range g.Spec.Metadata.Labels {
		labels[k] = v
	}
	lj, _ := json.Marshal(labels)
	sa := g.Spec.Template.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	canonical := labels["app"]
	if canonical == "" {
		canonical = g.Name
	}
	env := map[string]string{
		"CANONICAL_REVISION":             "latest",
		"CANONICAL_SERVICE":              canonical,
		"ISTIO_INBOUND_PORTS":            inboundPorts(g.Spec.Template.Ports),
		"ISTIO_LOCAL_EXCLUDE_PORTS":      "22,15090,15021,15020", // as istioctl: ssh stays reachable
		"ISTIO_METAJSON_LABELS":          string(lj),
		"ISTIO_META_AUTO_REGISTER_GROUP": g.Name,
		"ISTIO_META_CLUSTER_ID":          b.ClusterID,
		"ISTIO_META_DNS_CAPTURE":         "true",
		"ISTIO_META_NETWORK":             b.Network,
		"ISTIO_META_WORKLOAD_NAME":       g.Name,
		"ISTIO_NAMESPACE":                g.Namespace,
		"ISTIO_SERVICE":                  g.Name + "." + g.Namespace,
		"ISTIO_SERVICE_CIDR":             "*",
		"POD_NAMESPACE":                  g.Namespace,
		"SERVICE_ACCOUNT":                sa,
		"TRUST_DOMAIN":                   b.TrustDomain,
		"CA_ADDR":                        b.discovery(),
		"ISTIOD_SAN":                     b.SAN,
		// The roots the agent checks ewgate's 15012 with: the bundle's root-cert.pem, named
		// here and kept out of ./etc/certs, which istio-start.sh makes the agent's output
		// (OUTPUT_CERTS, PROV_CERT): the agent writes its key, its chain and the mesh root the
		// CA returned there. A bundle root kept in ./etc/certs loses ewgate's serving CA to
		// that write, and the next handshake with ewgate fails ("certificate signed by unknown
		// authority"; with istioctl's bundle both roots are istiod's and nothing is lost).
		// Moving the output away instead is worse: the agent then serves
		// ./etc/certs/root-cert.pem as the workload trust root (Envoy would trust ewgate's
		// serving CA for mesh traffic) and, without Envoy, deadlocks adding a watch on it.
		"XDS_ROOT_CA": bundleRootPath,
		"CA_ROOT_CA":  bundleRootPath,
	}
	if b.MeshID != "" {
		env["ISTIO_META_MESH_ID"] = b.MeshID
	}
	switch {
	case b.InternalIP != "":
		env["ISTIO_SVC_IP"] = b.InternalIP
		env["INSTANCE_IP"] = b.InternalIP
	case b.ExternalIP != "":
		env["ISTIO_SVC_IP"] = b.ExternalIP
		env["INSTANCE_IP"] = b.ExternalIP
		env["REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION"] = "true"
	}
	return env
}

// Where the VM keeps the bundle's root-cert.pem: beside the mesh config (/etc/istio/config,
// which Istio's VM package creates), relative to /, the agent's working directory, like
// pilot-agent's and istio-start.sh's own paths.
const bundleRootPath = "./etc/istio/config/root-cert.pem"

// inboundPorts is ISTIO_INBOUND_PORTS as istioctl writes it: the group template's ports, or
// every port ("*") when it names none.
func inboundPorts(ports map[string]uint32) string {
	if len(ports) == 0 {
		return "*"
	}
	nums := make([]int, 0, len(ports))
	for _, p := range ports {
		nums = append(nums, int(p))
	}
	sort.Ints(nums)
	s := make([]string, len(nums))
	for i, n := range nums {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (b *bundle) proxyConfig(env map[string]string) map[string]any {
	md := map[string]string{}
	for k, v := range env {
		if strings.HasPrefix(k, "ISTIO_META_") || k == "CANONICAL_REVISION" || k == "CANONICAL_SERVICE" ||
			k == "POD_NAMESPACE" || k == "SERVICE_ACCOUNT" || k == "TRUST_DOMAIN" || k == "ISTIO_METAJSON_LABELS" {
			md[k] = v
		}
	}
	pc := map[string]any{
		"discoveryAddress": b.discovery(),
		"proxyMetadata":    md,
	}
	if b.MeshID != "" {
		pc["meshId"] = b.MeshID
	}
	if b.Group.Spec.Probe != nil {
		pc["readinessProbe"] = b.Group.Spec.Probe
	}
	return pc
}

// writeBundle writes the files into dir. An existing bundle (any of its files) is refused
// unless overwrite; each file is written to a temporary name and renamed.
func writeBundle(dir string, files map[string][]byte, overwrite bool) error {
	if !overwrite {
		for _, name := range bundleFiles {
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				return fmt.Errorf("%s already holds a bundle (%s); pass --overwrite to replace it", dir, name)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, name := range bundleFiles {
		mode := os.FileMode(0o644)
		if name == "istio-token" {
			mode = 0o600
		}
		tmp, err := os.CreateTemp(dir, "."+name+".tmp")
		if err != nil {
			return err
		}
		_, werr := tmp.Write(files[name])
		cerr := tmp.Close()
		if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), mode)); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	return nil
}

// rootBundle joins ewgate's serving CA and the mesh root, each checked to hold certificates.
func rootBundle(servingCA, meshRoot []byte) ([]byte, error) {
	for what, b := range map[string][]byte{"--serving-ca": servingCA, "mesh root": meshRoot} {
		if !bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
			return nil, fmt.Errorf("%s holds no PEM certificate", what)
		}
	}
	out := append([]byte{}, bytes.TrimSpace(servingCA)...)
	out = append(out, '\n')
	out = append(out, bytes.TrimSpace(meshRoot)...)
	return append(out, '\n'), nil
}

func cmdVMConfig(args []string, stdout, stderr io.Writer) int {
	f, err := parseVMFlags(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ewgate vm-config: %v\n", err)
		return 2
	}
	var b *bundle
	if f.kubeconfig != "" {
		b, err = clusterBundle(f)
	} else {
		b, err = standaloneBundle(f, time.Now())
	}
	if err == nil {
		err = finishBundle(f, b)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ewgate vm-config: %v\n", err)
		return 1
	}
	// Never the token: only where it went.
	fmt.Fprintf(stdout, "wrote %s for WorkloadGroup %s/%s (VM connects to %s; token valid %s)\n",
		strings.Join(bundleFiles, ", ")+" to "+f.out, b.Group.Namespace, b.Group.Name, b.discovery(), f.duration)
	if b.note != "" {
		fmt.Fprintf(stderr, "ewgate vm-config: note: %s\n", b.note)
	}
	return 0
}

// finishBundle fills what both modes share and writes the files.
func finishBundle(f *vmFlags, b *bundle) error {
	b.Address, b.Port, b.SAN, b.MeshID = f.address, f.port, f.san, f.meshID
	b.InternalIP, b.ExternalIP = f.internalIP, f.externalIP
	if f.network != "" {
		b.Network = f.network
	} else if b.Network == "" {
		b.Network = b.Group.Spec.Template.Network
	}
	if f.clusterID != "" {
		b.ClusterID = f.clusterID
	}
	if b.TrustDomain == "" {
		b.TrustDomain = "cluster.local"
	}
	files, err := b.files()
	if err != nil {
		return err
	}
	return writeBundle(f.out, files, f.overwrite)
}

// probeMethods counts the health check methods a probe sets.
func probeMethods(p *registrar.ReadinessProbe) int {
	n := 0
	for _, set := range []bool{p.HTTPGet != nil, p.TCPSocket != nil, p.Exec != nil, p.GRPC != nil} {
		if set {
			n++
		}
	}
	return n
}
