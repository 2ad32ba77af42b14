package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// IstiodOptions configure istiod.
type IstiodOptions struct {
	ClusterID string // default "Kubernetes" (Istio's default cluster name)
	// Env is added to istiod's environment, e.g. PILOT_WORKLOAD_ENTRY_GRACE_PERIOD=2s or
	// TRUSTED_GATEWAY_CIDR=127.0.0.1/32.
	Env []string
}

// Istiod is a running pilot-discovery.
type Istiod struct {
	Proc *Proc

	XDSAddr        string // plaintext gRPC (Istio's 15010)
	SecureAddr     string // TLS gRPC: xDS and the CA (Istio's 15012)
	HTTPAddr       string // /ready, /debug (Istio's 8080)
	MonitoringAddr string // /metrics (Istio's 15014)
	ClusterID      string
	// SAN is the name in istiod's serving certificate that agents check (ISTIOD_SAN).
	SAN string
}

// IstioNamespace is where istiod runs and keeps its CA.
const IstioNamespace = "istio-system"

// StartIstiod starts istiod against the apiserver (whose Istio CRDs must be applied) and waits for
// /ready. It creates the istio-system namespace.
func StartIstiod(ctx context.Context, bin string, api *APIServer, o IstiodOptions) (*Istiod, error) {
	if o.ClusterID == "" {
		o.ClusterID = "Kubernetes"
	}
	if err := api.CreateNamespace(ctx, IstioNamespace, nil); err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		i, err := startIstiodOnce(ctx, bin, api, o)
		if err == nil {
			return i, nil
		}
		lastErr = err
		if !errors.Is(err, ErrExited) {
			break
		}
	}
	return nil, fmt.Errorf("harness: istiod: %w", lastErr)
}

func startIstiodOnce(ctx context.Context, bin string, api *APIServer, o IstiodOptions) (*Istiod, error) {
	addrs, err := freeAddrs(6)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(TempRoot(), "istiod-")
	if err != nil {
		return nil, err
	}
	i := &Istiod{
		XDSAddr: addrs[0], SecureAddr: addrs[1], HTTPAddr: addrs[2], MonitoringAddr: addrs[3],
		ClusterID: o.ClusterID, SAN: "istiod." + IstioNamespace + ".svc",
	}
	mesh := fmt.Sprintf("trustDomain: cluster.local\nrootNamespace: %s\ndefaultConfig:\n  discoveryAddress: %s\n",
		IstioNamespace, i.SecureAddr)
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(mesh), 0o644); err != nil {
		return nil, err
	}
	ctrlzPort := strings.TrimPrefix(addrs[5], "127.0.0.1:")
	args := []string{
		"discovery",
		"--kubeconfig", api.Kubeconfig,
		"--meshConfig", filepath.Join(dir, "mesh.yaml"),
		"--grpcAddr", i.XDSAddr,
		"--secureGRPCAddr", i.SecureAddr,
		"--httpAddr", i.HTTPAddr,
		"--httpsAddr", addrs[4],
		"--monitoringAddr", i.MonitoringAddr,
		"--ctrlz_address", "127.0.0.1",
		"--ctrlz_port", ctrlzPort,
		"--domain", "cluster.local",
		"--clusterID", o.ClusterID,
	}
	env := append([]string{
		"POD_NAMESPACE=" + IstioNamespace,
		"POD_NAME=istiod-e2e",
		"REVISION=default",
		"INJECTION_WEBHOOK_CONFIG_NAME=",
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
	}, o.Env...)
	p, err := StartProc(ProcSpec{Name: "istiod", Path: bin, Args: args, Env: env, Dir: dir})
	if err != nil {
		return nil, err
	}
	i.Proc = p
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := p.WaitFor(wctx, 200*time.Millisecond, func() error {
		code, err := httpGetCode(wctx, "http://"+i.HTTPAddr+"/ready")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/ready %d", code)
		}
		return nil
	}); err != nil {
		_ = p.Stop(5 * time.Second)
		return nil, err
	}
	return i, nil
}

// RootCert waits for istiod's CA root in the ConfigMap istio-ca-root-cert of ns (istiod writes it
// into every namespace) and returns it as PEM.
func (i *Istiod) RootCert(ctx context.Context, api *APIServer, ns string) ([]byte, error) {
	s, err := api.ConfigMapData(ctx, ns, "istio-ca-root-cert", "root-cert.pem")
	if err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// Metrics returns istiod's Prometheus text.
func (i *Istiod) Metrics(ctx context.Context) (string, error) {
	return httpGetBody(ctx, "http://"+i.MonitoringAddr+"/metrics")
}

// XDSConnection is one ADS stream istiod holds (its /debug/connections).
type XDSConnection struct {
	ConnectionID string    `json:"connectionId"` // <node id>-<n>, e.g. web1.vm-ns-1
	ConnectedAt  time.Time `json:"connectedAt"`
	Address      string    `json:"address"` // the peer's address as istiod sees it
}

// Connections lists the ADS streams istiod holds now. Scenarios use it to show that a refused VM
// never reached istiod.
func (i *Istiod) Connections(ctx context.Context) ([]XDSConnection, error) {
	body, err := httpGetBody(ctx, "http://"+i.HTTPAddr+"/debug/connections")
	if err != nil {
		return nil, fmt.Errorf("harness: istiod connections: %w", err)
	}
	var out struct {
		Connected []XDSConnection `json:"clients"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return nil, fmt.Errorf("harness: istiod connections: %w", err)
	}
	return out.Connected, nil
}

// Stop stops istiod.
func (i *Istiod) Stop() error { return i.Proc.Stop(10 * time.Second) }

func httpGetCode(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, nil
}

func httpGetBody(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return string(b), nil
}
