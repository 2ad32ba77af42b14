package harness

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// VMOptions describe a VM: a pilot-agent without Envoy, as `istioctl x workload entry configure`
// would set it up.
type VMOptions struct {
	Name           string // POD_NAME; also the directory name (keep it short: unix sockets)
	Namespace      string
	ServiceAccount string
	Group          string // ISTIO_META_AUTO_REGISTER_GROUP and WORKLOAD_NAME; empty: no auto-registration
	IP             string // INSTANCE_IP: use a 127.0.0.0/8 address, nothing dials it
	Network        string
	ClusterID      string

	Token   string // the istio-token content; empty: no token file
	RootPEM []byte // roots the agent trusts for xDS and the CA (XDS_ROOT_CA, CA_ROOT_CA)

	DiscoveryAddr string // host:port of xDS (istiod's secure port, or ewgate's 15012)
	CAAddr        string // host:port of the CA; default DiscoveryAddr
	SAN           string // ISTIOD_SAN: the name the agent checks in the server certificate

	Env []string // added to the agent's environment

	// ReadinessProbe is the proxy config's readinessProbe (fields of
	// istio.networking.v1.ReadinessProbe), as istioctl copies a WorkloadGroup's spec.probe into
	// the VM's mesh config: the agent runs it and reports HealthInformation on its ADS stream.
	// nil: no probe.
	ReadinessProbe map[string]any

	// Bundle, if set, is a directory `ewgate vm-config` wrote: the VM is then set up from it
	// alone, as Istio's VM packaging sets a VM up (vmbundle.go), and every field above but Name
	// and Env is ignored (StartVM fills them from the bundle).
	Bundle string
}

// VM is a running pilot-agent in its own working directory.
type VM struct {
	Proc *Proc
	Opts VMOptions
	Dir  string // the agent's working directory (its "/")
	// CertsDir is OUTPUT_CERTS: the agent writes cert-chain.pem, key.pem, root-cert.pem there.
	CertsDir string
	// RootFile is, for a VM from a bundle, where its root-cert.pem was put.
	RootFile string

	bin        string
	statusHold net.Listener
}

// StartVM starts a pilot-agent as a VM (DISABLE_ENVOY) and stops it when t ends, printing its log
// if t failed.
func StartVM(t testing.TB, agentBin string, o VMOptions) *VM {
	t.Helper()
	vm, err := startVM(agentBin, o)
	if err != nil {
		t.Fatal(err)
	}
	StopOnCleanup(t, vm.Proc)
	return vm
}

func startVM(agentBin string, o VMOptions) (*VM, error) {
	if o.CAAddr == "" {
		o.CAAddr = o.DiscoveryAddr
	}
	dir, err := os.MkdirTemp(TempRoot(), "vm-")
	if err != nil {
		return nil, err
	}
	vm := &VM{Opts: o, Dir: dir, CertsDir: filepath.Join(dir, "certs"), bin: agentBin}
	var (
		env         []string
		binds       []Bind
		proxyConfig map[string]any
		args        = []string{"proxy", "sidecar"}
	)
	if o.Bundle != "" {
		env, proxyConfig, binds, err = vm.layOutBundle(o.Bundle)
		args = []string{"proxy"} // as istio-start.sh runs it
	} else {
		env, proxyConfig, err = vm.layOut()
	}
	if err != nil {
		return nil, err
	}
	// pilot-agent always serves its status port on all interfaces (":15020" by default; no bind
	// address option; 0 is refused by validation; a --statusPort flag is silently ignored). The
	// harness holds a loopback listener on a free port and gives the agent that port: the agent's
	// wildcard bind then fails ("Error listening on status port", not fatal), so nothing listens
	// beyond loopback and two VMs do not collide on 15020.
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("harness: vm status port: %w", err)
	}
	vm.statusHold = hold
	proxyConfig["statusPort"] = hold.Addr().(*net.TCPAddr).Port
	pc, err := json.Marshal(proxyConfig)
	if err != nil {
		hold.Close()
		return nil, err
	}
	// No Envoy on these VMs: their workload is a proxyless gRPC client on the agent's xDS socket.
	env = append(env, "DISABLE_ENVOY=true", "PROXY_CONFIG="+string(pc))
	env = append(env, o.Env...)
	p, err := StartProc(ProcSpec{
		Name: "pilot-agent-" + o.Name, Path: agentBin, Dir: dir, Env: env, Args: args, Binds: binds,
	})
	if err != nil {
		hold.Close()
		return nil, err
	}
	vm.Proc = p
	go func() { // the holder lives as long as the agent
		<-p.Exited()
		hold.Close()
	}()
	return vm, nil
}

// layOut writes the token and roots of VMOptions into the VM's directory and returns the
// agent's environment and proxy config for them.
func (vm *VM) layOut() (env []string, proxyConfig map[string]any, err error) {
	o, dir := vm.Opts, vm.Dir
	// The agent reads ./var/run/secrets/tokens/istio-token relative to its working directory.
	if o.Token != "" {
		if err := writeFile(filepath.Join(dir, "var/run/secrets/tokens/istio-token"), []byte(o.Token), 0o600); err != nil {
			return nil, nil, err
		}
	}
	root := filepath.Join(dir, "root-cert.pem")
	if err := writeFile(root, o.RootPEM, 0o644); err != nil {
		return nil, nil, err
	}
	if err := os.MkdirAll(vm.CertsDir, 0o755); err != nil {
		return nil, nil, err
	}
	env = []string{
		"CA_ADDR=" + o.CAAddr,
		"ISTIOD_SAN=" + o.SAN,
		"XDS_ROOT_CA=" + root,
		"CA_ROOT_CA=" + root,
		"OUTPUT_CERTS=" + vm.CertsDir,
		"POD_NAMESPACE=" + o.Namespace,
		"SERVICE_ACCOUNT=" + o.ServiceAccount,
		"INSTANCE_IP=" + o.IP,
		"POD_NAME=" + o.Name,
		"ISTIO_META_GENERATOR=grpc",
		"ISTIO_META_CLUSTER_ID=" + o.ClusterID,
		"ISTIO_META_NETWORK=" + o.Network,
		"ISTIO_META_DNS_CAPTURE=false",
	}
	if o.Group != "" {
		env = append(env, "ISTIO_META_AUTO_REGISTER_GROUP="+o.Group, "ISTIO_META_WORKLOAD_NAME="+o.Group)
	}
	pc := map[string]any{"discoveryAddress": o.DiscoveryAddr}
	if o.ReadinessProbe != nil {
		pc["readinessProbe"] = o.ReadinessProbe
	}
	return env, pc, nil
}

// WaitCert waits for the agent's workload certificate in OUTPUT_CERTS and returns its leaf.
func (vm *VM) WaitCert(ctx context.Context) (*x509.Certificate, error) {
	var leaf *x509.Certificate
	err := vm.Proc.WaitFor(ctx, 100*time.Millisecond, func() error {
		b, err := os.ReadFile(filepath.Join(vm.CertsDir, "cert-chain.pem"))
		if err != nil {
			return err
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			return fmt.Errorf("cert-chain.pem: no PEM yet")
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return err
		}
		leaf = c
		return nil
	})
	return leaf, err
}

// SPIFFEID is the identity the agent's certificate must carry.
func (vm *VM) SPIFFEID(trustDomain string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, vm.Opts.Namespace, vm.Opts.ServiceAccount)
}

// AutoRegisteredName is the WorkloadEntry name istiod gives this VM:
// <group>-<ip with ':' as '-'>[-<network>].
func (vm *VM) AutoRegisteredName() string {
	n := vm.Opts.Group + "-" + strings.ReplaceAll(vm.Opts.IP, ":", "-")
	if vm.Opts.Network != "" {
		n += "-" + vm.Opts.Network
	}
	if len(n) > 253 {
		n = n[len(n)-253:]
	}
	return n
}

// GRPCBootstrap waits for the gRPC xDS bootstrap the agent writes
// (etc/istio/proxy/grpc-bootstrap.json in its working directory) and returns the path of a copy
// whose server URI points at the agent's real socket: the agent writes
// unix:///etc/istio/proxy/XDS although it creates the socket relative to its working directory.
func (vm *VM) GRPCBootstrap(ctx context.Context) (string, error) {
	src := filepath.Join(vm.Dir, "etc/istio/proxy/grpc-bootstrap.json")
	sock := filepath.Join(vm.Dir, "etc/istio/proxy/XDS")
	var data []byte
	err := vm.Proc.WaitFor(ctx, 100*time.Millisecond, func() error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if !json.Valid(b) {
			return fmt.Errorf("bootstrap not complete yet")
		}
		if _, err := os.Stat(sock); err != nil {
			return fmt.Errorf("xds socket: %w", err)
		}
		data = b
		return nil
	})
	if err != nil {
		return "", err
	}
	fixed := strings.ReplaceAll(string(data), "unix:///etc/istio/proxy/XDS", "unix://"+sock)
	dst := filepath.Join(vm.Dir, "grpc-bootstrap.e2e.json")
	if err := os.WriteFile(dst, []byte(fixed), 0o644); err != nil {
		return "", err
	}
	return dst, nil
}

// StartXDSClient starts a grpc-go xDS client (this test binary re-executed, see
// RunXDSClientIfRequested) on the VM, with the agent's bootstrap, dialing xds:///target. Its
// connection makes the agent open ADS upstream. It is stopped when t ends.
func (vm *VM) StartXDSClient(t testing.TB, ctx context.Context, target string, rpc string) *Proc {
	t.Helper()
	boot, err := vm.GRPCBootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := StartXDSClientProc(boot, target, rpc)
	if err != nil {
		t.Fatal(err)
	}
	StopOnCleanup(t, p)
	return p
}

func writeFile(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, mode)
}
