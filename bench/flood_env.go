package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The flood suite's fixed names.
const (
	floodIssuer   = "https://issuer.flood.test"
	floodCluster  = "cluster1"
	controlName   = "istiod.istio-system.svc" // the name VMs check in 15012's certificate
	slowHost      = "slow.flood.test"         // the ingress route to the backend that never answers
	floodInstance = "ewgate-flood"            // the registrar's instance (stable across restarts)
	vmNamespace   = "vms"
	vmGroup       = "web"
	vmAccount     = "web"
)

// floodEnv is everything the suite starts: the gateway under test (its open-file limit lowered),
// a second ewgate that only serves the mesh routes over xDS (so the upstream can be lost), the
// TLS backend, the backend that never answers, and the credentials: a CA for 15012's serving
// certificate, a token issuer's key whose JWKS the gateway reads from a file.
type floodEnv struct {
	dir, bin string
	fdLimit  int
	grace    time.Duration
	logf     func(string, ...any)

	meshAddr, ingressAddr, adminAddr, controlAddr, cpAddr, cpAdmin, cpMesh, gwCP string

	backend  *Backend
	slow     *slowBackend
	meshTLS  *tls.Config // a sidecar's: SNI, ALPN istio
	vmTLS    *tls.Config // a VM's for 15012: the serving CA, istiod's name, ALPN h2
	tokenKey *ecdsa.PrivateKey
	csrPEM   string // one CSR for every steady CreateCertificate

	storeDir string // the registrar's file store: a small tmpfs
	mounted  bool
	cfgPath  string
	cfgBody  string
	cpPath   string

	mu      sync.Mutex
	gw      *proc // the gateway; replaced when it is restarted
	starts  int   // restarts so far
	prevLog int64 // bytes logged by earlier starts
	cp      *proc // the route source
}

func newFloodEnv(ctx context.Context, dir, bin string, fdLimit int, logf func(string, ...any)) (*floodEnv, error) {
	e := &floodEnv{dir: dir, bin: bin, fdLimit: fdLimit, grace: 2 * time.Second, logf: logf}
	ports := make([]int, 8)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	a := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	e.meshAddr, e.ingressAddr, e.adminAddr, e.controlAddr = a(0), a(1), a(2), a(3)
	e.cpAddr, e.cpAdmin, e.cpMesh, e.gwCP = a(4), a(5), a(6), a(7)

	pk, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	e.meshTLS = pk.clientConfig()
	if e.backend, err = StartBackend(pk.server); err != nil {
		return nil, err
	}
	if e.slow, err = startSlowBackend(); err != nil {
		e.backend.Close()
		return nil, err
	}
	if err := e.makeControlCert(); err != nil {
		e.close()
		return nil, err
	}
	if err := e.makeIssuer(); err != nil {
		e.close()
		return nil, err
	}
	e.storeDir = filepath.Join(dir, "store")
	if err := e.mountStore(); err != nil {
		e.close()
		return nil, err
	}
	if err := e.writeConfigs(0); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

// makeControlCert makes a CA and 15012's serving certificate (for istiod's name, as VMs check).
func (e *floodEnv) makeControlCert() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flood 15012 CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: controlName}, DNSNames: []string{controlName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	if err := os.WriteFile(filepath.Join(e.dir, "control.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(e.dir, "control.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	e.vmTLS = &tls.Config{RootCAs: roots, ServerName: controlName, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
	// The CSR the steady VM client sends: the CA signs for the caller's verified identity anyway.
	csrKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://cluster.local/ns/" + vmNamespace + "/sa/" + vmAccount)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, csrKey)
	if err != nil {
		return err
	}
	e.csrPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}))
	return nil
}

// makeIssuer makes the token issuer's ES256 key and writes its public key set for jwks_file.
func (e *floodEnv) makeIssuer() error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	e.tokenKey = k
	pub, err := k.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return err
	}
	b64 := base64.RawURLEncoding.EncodeToString
	set := map[string]any{"keys": []map[string]string{{
		"kty": "EC", "crv": "P-256", "x": b64(pub[1:33]), "y": b64(pub[33:65]), "kid": "k1", "alg": "ES256", "use": "sig",
	}}}
	b, _ := json.Marshal(set)
	return os.WriteFile(filepath.Join(e.dir, "jwks.json"), b, 0o600)
}

// token is a Kubernetes-shaped service-account token for vms/web, audience istio-ca, signed
// with key (the issuer's, or another one for the bad-token flood).
func signToken(key *ecdsa.PrivateKey) (string, error) {
	b64 := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": "k1", "typ": "JWT"})
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"iss": floodIssuer, "aud": []string{"istio-ca"}, "sub": "system:serviceaccount:" + vmNamespace + ":" + vmAccount,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(2 * time.Hour).Unix(),
		"kubernetes.io": map[string]any{"namespace": vmNamespace, "serviceaccount": map[string]any{"name": vmAccount, "uid": "uid-web"}},
	})
	signing := b64(hdr) + "." + b64(claims)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + b64(sig), nil
}

// mountStore mounts a 4 MiB tmpfs on the store directory, so the full-store fault can fill it
// without touching the machine's disk. It needs root (CAP_SYS_ADMIN), as the suite runs in CI.
func (e *floodEnv) mountStore() error {
	if err := os.MkdirAll(e.storeDir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", e.storeDir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=4m,mode=0755"); err != nil {
		return fmt.Errorf("flood: mount a tmpfs on the store directory %s (the full-store fault needs it; run as root): %w", e.storeDir, err)
	}
	e.mounted = true
	return nil
}

// gatewayConfig is the YAML of the gateway under test. It uses only keys that exist today and
// leaves every limit at its default: the defaults are what the suite judges. reloadMark changes
// a comment and the log level's spelling-free twin (info) stays: a rewrite that reloads nothing.
func (e *floodEnv) gatewayConfig(reloadMark int) string {
	return fmt.Sprintf(`# ewgate under the flood suite (generated; reload mark %[14]d)
log: {level: info}
admin: {address: %[1]s}
drain_timeout: 1s
reload: {watch_interval: 200ms}
listeners:
  - {name: mesh, kind: mesh, address: %[2]s, routes_from: xds}
  - name: ingress
    kind: ingress
    address: %[3]s
    routes:
      - {hosts: [%[4]s], cluster: slow}
clusters:
  - name: slow
    listener: ingress
    endpoints: [{address: %[5]s}]
xds:
  server: %[6]s
  initial_backoff: 100ms
  max_backoff: 500ms
control_plane:
  address: %[7]s
  workload_entries_dir: %[8]s
  ca: {data_dir: %[9]s/ca}
authn:
  issuers:
    - issuer: %[10]s
      cluster: %[11]s
      jwks_file: %[9]s/jwks.json
control:
  address: %[12]s
  tls: {cert_file: %[9]s/control.crt, key_file: %[9]s/control.key}
  upstreams: [{cluster: %[11]s, builtin: true}]
  register_timeout: 2s
registrar:
  instance: %[15]s
  grace_period: %[13]s
  retry_max: 500ms
  sweep_interval: 2s
workload_groups:
  - metadata: {name: %[16]s, namespace: %[17]s}
    spec:
      metadata: {labels: {app: web}}
      template: {serviceAccount: %[18]s, ports: {http: 8080}}
# The VMs' own service: the built-in control plane answers their ADS streams with it.
services:
  - name: web
    namespace: %[17]s
    hosts: [web.vms.svc.cluster.local]
    ports: [{number: 8080, name: http, protocol: TLS}]
    workload_selector: {labels: {app: web}}
`, e.adminAddr, e.meshAddr, e.ingressAddr, slowHost, e.slow.Addr(), e.cpAddr, e.gwCP, e.storeDir, e.dir,
		floodIssuer, floodCluster, e.controlAddr, e.grace, reloadMark, floodInstance, vmGroup, vmNamespace, vmAccount)
}

// cpConfig is the route source: a second ewgate that serves only the mesh routes over xDS.
func (e *floodEnv) cpConfig() string {
	host, port, _ := net.SplitHostPort(e.backend.Addr())
	return fmt.Sprintf(`# the flood suite's xDS route source (generated)
log: {level: warn}
admin: {address: %s}
reload: {watch_interval: -1s}
listeners:
  - {name: mesh, kind: mesh, address: %s}
control_plane:
  address: %s
  debounce: 20ms
services:
  - name: bench
    namespace: default
    hosts: [bench.default.svc.cluster.local]
    ports: [{number: 8443, name: tls, protocol: TLS}]
    endpoints:
      - {address: %s, ports: {tls: %s}, service_account: bench}
`, e.cpAdmin, e.cpMesh, e.cpAddr, host, port)
}

func (e *floodEnv) writeConfigs(mark int) error {
	e.cfgPath = filepath.Join(e.dir, "ewgate.yaml")
	e.cpPath = filepath.Join(e.dir, "routes.yaml")
	e.cfgBody = e.gatewayConfig(mark)
	if err := os.WriteFile(e.cfgPath, []byte(e.cfgBody), 0o600); err != nil {
		return err
	}
	return os.WriteFile(e.cpPath, []byte(e.cpConfig()), 0o600)
}

// startCP starts the route source and waits until it serves.
func (e *floodEnv) startCP(ctx context.Context) error {
	p, err := startProc("routes", filepath.Join(e.dir, "routes.log"), e.bin, "serve", "--config", e.cpPath)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.cp = p
	e.mu.Unlock()
	return waitFor(ctx, p, "serving xDS", 30*time.Second, func() bool { return canDial(e.cpAddr) })
}

// startGateway starts the gateway under `ulimit -n fdLimit` (soft and hard: Go's runtime raises
// the soft limit to the hard one) and waits until it is ready and routes the mesh SNI.
func (e *floodEnv) startGateway(ctx context.Context) error {
	// A restarted gateway's log starts a new file; the old one is kept and still counted.
	logFile := filepath.Join(e.dir, "ewgate.log")
	if st, err := os.Stat(logFile); err == nil {
		e.mu.Lock()
		e.starts++
		e.prevLog += st.Size()
		os.Rename(logFile, fmt.Sprintf("%s.%d", logFile, e.starts))
		e.mu.Unlock()
	}
	argv := []string{"/bin/sh", "-c", `ulimit -n "$1" && shift && exec "$@"`, "sh", strconv.Itoa(e.fdLimit), e.bin, "serve", "--config", e.cfgPath}
	p, err := startProc("ewgate", logFile, argv...)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.gw = p
	e.mu.Unlock()
	return waitFor(ctx, p, "ready", 30*time.Second, func() bool {
		return httpOK("http://"+e.adminAddr+"/healthz/ready") && canDial(e.controlAddr)
	})
}

func (e *floodEnv) gateway() *proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.gw
}

func (e *floodEnv) routes() *proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cp
}

// kill SIGKILLs a process by its PID and waits for it.
func kill(p *proc) {
	if p == nil || p.exited() {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

// logSize is the bytes the gateway has logged (stdout and stderr), over all its starts.
func (e *floodEnv) logSize() int64 {
	e.mu.Lock()
	prev := e.prevLog
	e.mu.Unlock()
	st, err := os.Stat(filepath.Join(e.dir, "ewgate.log"))
	if err != nil {
		return prev
	}
	return prev + st.Size()
}

// entries lists the WorkloadEntry files in the store (workloadentries/<ns>/<name>.yaml).
func (e *floodEnv) entries() []string {
	m, _ := filepath.Glob(filepath.Join(e.storeDir, "workloadentries", "*", "*.yaml"))
	return m
}

func (e *floodEnv) close() {
	kill(e.gateway())
	kill(e.routes())
	if e.slow != nil {
		e.slow.Close()
	}
	if e.backend != nil {
		e.backend.Close()
	}
	if e.mounted {
		if err := syscall.Unmount(e.storeDir, syscall.MNT_DETACH); err != nil {
			e.logf("unmount the store tmpfs %s: %v", e.storeDir, err)
		}
		e.mounted = false
	}
}

// slowBackend accepts connections and never answers: each proxied connection to it holds two
// of the gateway's files (client and upstream sockets) until someone closes it.
type slowBackend struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startSlowBackend() (*slowBackend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("flood: slow backend listen: %w", err)
	}
	s := &slowBackend{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				t := time.NewTimer(10 * time.Millisecond) // out of files: back off, bounded
				<-t.C
				continue
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
		}
	})
	return s, nil
}

func (s *slowBackend) Addr() string { return s.ln.Addr().String() }

// drop closes every held connection (between scenarios).
func (s *slowBackend) drop() {
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
}

func (s *slowBackend) Close() {
	s.ln.Close()
	s.wg.Wait()
	s.drop()
}
