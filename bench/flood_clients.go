package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// The steady clients' source addresses: apart from every attacker's, so a per-source cap on an
// attacker never counts them.
var (
	meshClientIP = net.IPv4(127, 0, 0, 200)
	vmClientIP   = net.IPv4(127, 0, 0, 201)
)

// probeStats are one steady client's outcomes over a window.
type probeStats struct {
	mu        sync.Mutex
	ok, fail  int
	lat       []float64 // ms, successes only
	firstErr  string
	errCounts map[string]int
}

func (s *probeStats) add(d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.ok++
		s.lat = append(s.lat, float64(d)/float64(time.Millisecond))
		return
	}
	s.fail++
	if s.firstErr == "" {
		s.firstErr = err.Error()
	}
}

// summary: success percent and p99 latency (ms) of the successes.
func (s *probeStats) summary() (okPct, p99 float64, n int, firstErr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n = s.ok + s.fail
	if n > 0 {
		okPct = 100 * float64(s.ok) / float64(n)
	}
	l := slices.Clone(s.lat)
	slices.Sort(l)
	return okPct, pct(l, 99), n, s.firstErr
}

// steady runs one attempt every 1/rate seconds until ctx ends, at most maxInFlight at once (an
// attempt that cannot start because earlier ones are stuck counts as a failure: the service is
// not keeping up), each under its own timeout. It returns when every attempt has finished.
func steady(ctx context.Context, rate int, maxInFlight int, timeout time.Duration, st *probeStats, attempt func(context.Context) error) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; n < rate*600; n++ { // at most ten minutes' worth, whatever ctx says
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			st.add(0, fmt.Errorf("flood: %d attempts already in flight", maxInFlight))
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			actx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			began := time.Now()
			err := attempt(actx)
			st.add(time.Since(began), err)
		})
	}
}

// meshAttempt is one sidecar exchange through the mesh listener: TCP, TLS with the Istio SNI
// and ALPN istio to the backend, one 64-byte ping echoed, the backend closes.
func (e *floodEnv) meshAttempt(ctx context.Context) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: meshClientIP}}
	raw, err := d.DialContext(ctx, "tcp", e.meshAddr)
	if err != nil {
		return fmt.Errorf("mesh dial: %w", err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	tc := tls.Client(raw, e.meshTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("mesh handshake: %w", err)
	}
	msg := bytes.Repeat([]byte{'m'}, 64)
	if _, err := tc.Write(append(header(cmdPing, 64), msg...)); err != nil {
		return fmt.Errorf("mesh write: %w", err)
	}
	got := make([]byte, 64)
	if _, err := io.ReadFull(tc, got); err != nil {
		return fmt.Errorf("mesh read: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("mesh: echo differs")
	}
	return nil
}

// vmDial opens a gRPC connection to 15012 as a VM would, from the given source address.
func (e *floodEnv) vmDial(src net.IP) (*grpc.ClientConn, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}}
		return d.DialContext(ctx, "tcp", addr)
	}
	return grpc.NewClient("passthrough:///"+e.controlAddr, grpc.WithTransportCredentials(credentials.NewTLS(e.vmTLS)),
		grpc.WithContextDialer(dial))
}

// vmAttempt is one VM certificate request on a connection of its own (TLS, HTTP/2, a bearer
// token, CreateCertificate against the built-in CA): a new connection each time, so a flood
// that starves the accept path shows here.
func (e *floodEnv) vmAttempt(token string) func(context.Context) error {
	return func(ctx context.Context) error {
		cc, err := e.vmDial(vmClientIP)
		if err != nil {
			return err
		}
		defer cc.Close()
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, "ClusterID", floodCluster)
		resp, err := securityv1alpha1.NewIstioCertificateServiceClient(cc).CreateCertificate(ctx,
			&securityv1alpha1.IstioCertificateRequest{Csr: e.csrPEM, ValidityDuration: 3600})
		if err != nil {
			return fmt.Errorf("vm CreateCertificate: %w", err)
		}
		if len(resp.CertChain) == 0 {
			return fmt.Errorf("vm CreateCertificate: empty chain")
		}
		return nil
	}
}

// probes are the two steady clients of one window.
type probes struct {
	mesh, vm probeStats
}

// runProbes runs both steady clients until ctx ends and returns when their attempts are done.
func (e *floodEnv) runProbes(ctx context.Context, rates floodRates, token string) *probes {
	p := &probes{}
	var wg sync.WaitGroup
	wg.Go(func() { steady(ctx, rates.mesh, 64, 3*time.Second, &p.mesh, e.meshAttempt) })
	wg.Go(func() { steady(ctx, rates.vm, 32, 3*time.Second, &p.vm, e.vmAttempt(token)) })
	wg.Wait()
	return p
}
