package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ControlServingCert is a serving certificate for ewgate's VM control endpoint (15012), made by a
// CA of its own, written as files ewgate's control.tls can name.
type ControlServingCert struct {
	CA       *CA
	CertFile string
	KeyFile  string
}

// NewControlServingCert makes a CA and a server certificate for san (the name pilot-agent
// checks: ISTIOD_SAN, istiod.istio-system.svc by default) in dir.
func NewControlServingCert(dir, san string) (*ControlServingCert, error) {
	ca, err := NewCA("ewgate e2e 15012 CA")
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue(LeafOptions{CommonName: san, DNSNames: []string{san}})
	if err != nil {
		return nil, err
	}
	s := &ControlServingCert{CA: ca, CertFile: filepath.Join(dir, "control-tls.crt"), KeyFile: filepath.Join(dir, "control-tls.key")}
	if err := writeFile(s.CertFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := writeFile(s.KeyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

// Metrics returns ewgate's Prometheus text (its admin /metrics).
func (e *Ewgate) Metrics(ctx context.Context) (string, error) { return e.Get(ctx, "/metrics") }

// MetricSum adds up the samples of the metric family name in Prometheus text whose label set
// contains every one of labels (each `key="value"`). A family with no such sample sums to 0.
func MetricSum(text, name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var lbls string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.Index(rest, "}")
			if end < 0 {
				continue
			}
			lbls, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another family with this prefix (name_bucket, name_total...)
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(","+lbls+",", ","+l+",") {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// ReadFileWait reads a file some peer writes (e.g. the root ewgate's built-in CA generates on
// its first start), waiting for it under ctx while p runs.
func ReadFileWait(ctx context.Context, p *Proc, path string) ([]byte, error) {
	var b []byte
	err := p.WaitFor(ctx, 50*time.Millisecond, func() error {
		var err error
		if b, err = os.ReadFile(path); err != nil {
			return err
		}
		if len(b) == 0 {
			return fmt.Errorf("%s is empty", path)
		}
		return nil
	})
	return b, err
}

// ControlSAN is the name ewgate's 15012 serving certificate carries and the agents check
// (ISTIOD_SAN): the name a VM dials for istiod, as istioctl's hosts file maps it to the gateway.
// It is also every harness istiod's SAN.
const ControlSAN = "istiod.istio-system.svc"

// AgentUsesDiscoveryAddrForCA unsets CA_ADDR (StartVM sets it; the last value of a variable
// wins): pilot-agent checks ISTIOD_SAN in the CA's certificate only when CA_ADDR is unset and the
// CA is reached at the discovery address. With CA_ADDR set it checks the host of CA_ADDR, here an
// IP, which a serving certificate made for istiod.istio-system.svc does not name ("cannot validate
// certificate for 127.0.0.1 because it doesn't contain any IP SANs"). istioctl's cluster.env
// names the host (istiod.istio-system.svc:15012, mapped to the gateway by /etc/hosts), so real
// VMs do not meet this; VMs given an IP address for CA_ADDR do.
var AgentUsesDiscoveryAddrForCA = []string{"CA_ADDR="}

// YAMLQuote quotes s for a YAML flow scalar.
func YAMLQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// PEMBundle concatenates PEM blocks into one root bundle (XDS_ROOT_CA / CA_ROOT_CA).
func PEMBundle(pems ...[]byte) []byte {
	var b []byte
	for _, p := range pems {
		b = append(b, p...)
		if len(p) > 0 && p[len(p)-1] != '\n' {
			b = append(b, '\n')
		}
	}
	return b
}

// WaitIssuers waits until n of ewgate's VM-token issuers hold a key set
// (ewgate_authn_issuer_ready) and, with ready, until ewgate reports ready too.
func (e *Ewgate) WaitIssuers(ctx context.Context, n int, ready bool) error {
	return e.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		if ready {
			if _, err := e.Get(ctx, "/healthz/ready"); err != nil {
				return err
			}
		}
		m, err := e.Metrics(ctx)
		if err != nil {
			return err
		}
		if got := MetricSum(m, "ewgate_authn_issuer_ready"); got != float64(n) {
			return fmt.Errorf("%v of %d VM-token issuers have a key set", got, n)
		}
		return nil
	})
}

// FrontedCluster is one cluster behind a VM front: its apiserver (the issuer of its VMs'
// tokens, and the store ewgate registers its VMs in) and its istiod (the upstream its VMs'
// calls are forwarded to, identity forward).
type FrontedCluster struct {
	ID     string
	API    *APIServer
	Istiod *Istiod
	// IstiodRoot is what ewgate trusts for istiod's 15012 certificate (the mesh root).
	IstiodRoot []byte
}

// VMFrontOptions configure StartVMFront.
type VMFrontOptions struct {
	// Clusters: one is the one-cluster front (kubernetes.kubeconfig, one store); more are one
	// store per cluster (kubernetes.clusters), an issuer and an upstream each.
	Clusters  []FrontedCluster
	Control   string   // the VM control endpoint (15012) address; empty: a free loopback port
	Instance  string   // registrar.instance
	Registrar []string // lines added to the registrar section (e.g. lease and sweep timings)
	// Config, when set, renders the config file from FrontVars instead of the harness's own
	// (e.g. a block of the operator's docs, DocBlock).
	Config func(vars map[string]string) string
}

// VMFront is an ewgate whose VM control endpoint forwards each cluster's VMs to that cluster's
// istiod, with the registrar writing to each cluster's apiserver: the mesh set-up of
// docs/vm-onboarding.md, and of docs/multicluster.md with several clusters.
type VMFront struct {
	Gw        *Ewgate
	Control   string // ewgate's 15012 (host:port)
	Roots     []byte // what the VMs trust: ewgate's serving CA + the mesh root(s)
	ServingCA []byte // the CA of ewgate's 15012 serving certificate
	Instance  string // registrar.instance: the workloadController of ewgate's entries
	Config    string // the config file ewgate runs with
	agentBin  string
}

// StartVMFront starts that ewgate (serving certificate for ControlSAN made here, grace period
// 2s) and waits until it holds every issuer's keys. agentBin is pilot-agent, for StartVM.
func StartVMFront(t testing.TB, agentBin string, o VMFrontOptions) *VMFront {
	t.Helper()
	if len(o.Clusters) == 0 {
		t.Fatal("harness: StartVMFront: no cluster")
	}
	dir := newEwgateDir(t)
	serving, err := NewControlServingCert(dir, ControlSAN)
	if err != nil {
		t.Fatal(err)
	}
	f := &VMFront{Control: o.Control, ServingCA: serving.CA.CertPEM, Instance: o.Instance, agentBin: agentBin}
	roots := [][]byte{serving.CA.CertPEM}
	rootFiles := make([]string, len(o.Clusters))
	for i, c := range o.Clusters {
		rootFiles[i] = filepath.Join(dir, "istiod-root-"+c.ID+".pem")
		if err := writeFile(rootFiles[i], c.IstiodRoot, 0o644); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(roots, func(r []byte) bool { return SamePEMCerts(r, c.IstiodRoot) }) {
			roots = append(roots, c.IstiodRoot)
		}
	}
	f.Roots = PEMBundle(roots...)
	if f.Control == "" {
		f.Control = freeLoopback(t)
	}
	admin := freeLoopback(t)
	mesh := freeLoopback(t)
	if o.Config != nil {
		f.Config = o.Config(frontVars(t, o, admin, mesh, f.Control, serving, rootFiles))
	} else {
		f.Config = vmFrontConfig(o, admin, mesh, f.Control, serving, rootFiles)
	}
	f.Gw = StartEwgate(t, admin, f.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := f.Gw.WaitIssuers(ctx, len(o.Clusters), false); err != nil {
		t.Fatalf("harness: VM front: %v\n%s", err, f.Gw.Proc.Tail(40))
	}
	return f
}

// vmFrontConfig renders the front's config file.
func vmFrontConfig(o VMFrontOptions, admin, mesh, control string, serving *ControlServingCert, rootFiles []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "admin: {address: %s}\nlisteners:\n  - {name: mesh, kind: mesh, address: %s}\n", admin, mesh)
	if len(o.Clusters) == 1 {
		fmt.Fprintf(&b, "kubernetes: {kubeconfig: %s}\n", YAMLQuote(o.Clusters[0].API.Kubeconfig))
	} else {
		b.WriteString("kubernetes:\n  clusters:\n")
		for _, c := range o.Clusters {
			fmt.Fprintf(&b, "    - {cluster: %s, kubeconfig: %s}\n", c.ID, YAMLQuote(c.API.Kubeconfig))
		}
	}
	b.WriteString("authn:\n  issuers:\n")
	for _, c := range o.Clusters {
		fmt.Fprintf(&b, "    - issuer: %s\n      cluster: %s\n      discovery_url: %s\n      ca_file: %s\n",
			YAMLQuote(c.API.Issuer), c.ID, YAMLQuote(c.API.URL), YAMLQuote(c.API.CAFile))
	}
	fmt.Fprintf(&b, "control:\n  address: %s\n  tls: {cert_file: %s, key_file: %s}\n  upstreams:\n",
		control, YAMLQuote(serving.CertFile), YAMLQuote(serving.KeyFile))
	for i, c := range o.Clusters {
		fmt.Fprintf(&b, "    - cluster: %s\n      address: %s\n      ca_file: %s\n      server_name: %s\n      identity: forward\n",
			c.ID, c.Istiod.SecureAddr, YAMLQuote(rootFiles[i]), c.Istiod.SAN)
	}
	fmt.Fprintf(&b, "registrar:\n  instance: %s\n  grace_period: 2s\n", o.Instance)
	for _, l := range o.Registrar {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// frontVars are the values a config template of the front gets: ADMIN, MESH, CONTROL,
// CONTROL_CERT, CONTROL_KEY, INSTANCE, ROOT_CERT (the mesh root every cluster's istiod serves
// under: the clusters must share it), and per cluster, named by its ID's last dash-separated
// word in capitals (cluster-a: A), <P>_ISSUER, <P>_API, <P>_API_CA, <P>_ISTIOD, <P>_KUBECONFIG.
func frontVars(t testing.TB, o VMFrontOptions, admin, mesh, control string, serving *ControlServingCert, rootFiles []string) map[string]string {
	t.Helper()
	v := map[string]string{
		"ADMIN": admin, "MESH": mesh, "CONTROL": control, "INSTANCE": o.Instance,
		"CONTROL_CERT": serving.CertFile, "CONTROL_KEY": serving.KeyFile, "ROOT_CERT": rootFiles[0],
	}
	for _, c := range o.Clusters {
		if !SamePEMCerts(c.IstiodRoot, o.Clusters[0].IstiodRoot) {
			t.Fatal("harness: a front config template needs one mesh root shared by every cluster")
		}
		p := strings.ToUpper(c.ID[strings.LastIndex(c.ID, "-")+1:])
		v[p+"_ISSUER"], v[p+"_API"], v[p+"_API_CA"] = c.API.Issuer, c.API.URL, c.API.CAFile
		v[p+"_ISTIOD"], v[p+"_KUBECONFIG"] = c.Istiod.SecureAddr, c.API.Kubeconfig
	}
	return v
}

// StartVM starts a pilot-agent pointed at this ewgate's 15012, trusting ewgate's serving CA and
// the mesh root(s); o names the VM, its identity, cluster and network.
func (f *VMFront) StartVM(t testing.TB, o VMOptions) *VM {
	t.Helper()
	o.RootPEM, o.DiscoveryAddr, o.SAN = f.Roots, f.Control, ControlSAN
	o.Env = append(append([]string(nil), o.Env...), AgentUsesDiscoveryAddrForCA...)
	return StartVM(t, f.agentBin, o)
}

// Metric reads one sum of ewgate's metrics (MetricSum).
func (f *VMFront) Metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := f.Gw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return MetricSum(m, name, labels...)
}

// freeLoopback is a free 127.0.0.1 address.
func freeLoopback(t testing.TB) string {
	t.Helper()
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}
