package dataplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/sni"
)

// testPKI is a CA whose leaves the backends serve; made fresh for every test.
type testPKI struct{ *testkit.Cert }

func newPKI(t testing.TB) *testPKI { return &testPKI{testkit.NewCA(t, "ewgate test CA")} }

func (p *testPKI) leaf(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	return p.Server(t, names...).TLS()
}

// clientConfig verifies the backend's chain against the test CA: a gateway that terminated
// TLS could not present it, so a verified handshake proves the session is end to end.
func (p *testPKI) clientConfig(serverName string, alpn ...string) *tls.Config {
	return &tls.Config{ServerName: serverName, NextProtos: alpn, RootCAs: p.Pool()}
}

// backend is a real crypto/tls server on loopback that echoes what it reads and records what
// each session's ClientHello said.
type backend struct {
	ln    net.Listener
	mu    sync.Mutex
	seen  []seenHello
	conns sync.WaitGroup
	keys  chan []byte // exported keying material of each session, to compare with the client's
}

type seenHello struct {
	serverName string
	alpn       []string
}

func startBackend(t testing.TB, p *testPKI, names ...string) *backend {
	t.Helper()
	return startBackendOn(t, p, "127.0.0.1:0", names...)
}

// stop closes the backend's listener and waits for its connections to end: a connect to its
// address is then refused, until a backend is started on the address again.
func (b *backend) stop() {
	b.ln.Close()
	b.conns.Wait()
}

// startBackendOn is startBackend on a given loopback address (a stopped backend's, to restart it).
func startBackendOn(t testing.TB, p *testPKI, addr string, names ...string) *backend {
	t.Helper()
	b := &backend{keys: make(chan []byte, 1024)}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{p.leaf(t, names...)},
		NextProtos:   []string{"istio", "istio-peer-exchange", "h2", "http/1.1"},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			b.mu.Lock()
			b.seen = append(b.seen, seenHello{h.ServerName, h.SupportedProtos})
			b.mu.Unlock()
			return nil, nil
		},
	}
	ln, err := tls.Listen("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.ln = ln
	b.conns.Add(1)
	go func() {
		defer b.conns.Done()
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil { // out of files: the gateway under test shares this process's limit
				time.Sleep(5 * time.Millisecond)
				continue
			}
			b.conns.Add(1)
			go func() {
				defer b.conns.Done()
				b.serve(c.(*tls.Conn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.conns.Wait()
	})
	return b
}

// serve echoes until the client half-closes, then half-closes back (so the client sees every
// byte and then EOF).
func (b *backend) serve(c *tls.Conn) {
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return
	}
	st := c.ConnectionState()
	if km, err := st.ExportKeyingMaterial("ewgate-test", nil, 32); err == nil {
		select {
		case b.keys <- km:
		default:
		}
	}
	io.Copy(c, c)
	c.CloseWrite()
}

func (b *backend) addr() string { return b.ln.Addr().String() }

func (b *backend) hellos() []seenHello {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]seenHello(nil), b.seen...)
}

// testGateway is a Gateway on loopback with its registry and observed logs.
type testGateway struct {
	*Gateway
	t    testing.TB
	reg  *prometheus.Registry
	logs *observer.ObservedLogs
}

// parseConfig decodes the data plane's sections of a config file (relay, listeners, clusters;
// any other key is an error) and resolves their defaults with Config.SetDefaults, as config.Parse
// does for the whole file. These tests cannot call config.Parse: package config imports this one.
func parseConfig(data []byte, name string) (*Config, error) {
	var s struct {
		Relay     Relay           `yaml:"relay"`
		Listeners []Listener      `yaml:"listeners"`
		Clusters  []ClusterConfig `yaml:"clusters"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &Config{Relay: s.Relay, Listeners: s.Listeners, Clusters: s.Clusters}
	c.SetDefaults()
	return c, nil
}

func startGateway(t testing.TB, yaml string) *testGateway { return startGatewayClock(t, yaml, nil) }

// startGatewayClock is startGateway with now as the gateway's clock (nil: time.Now).
func startGatewayClock(t testing.TB, yaml string, now func() time.Time) *testGateway {
	t.Helper()
	f, err := parseConfig([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Relay.Engine = testRelay
	core, logs := observer.New(zap.DebugLevel)
	reg := prometheus.NewRegistry()
	g := New(Options{Logger: zap.New(core), Registerer: reg, Now: now})
	if err := g.Apply(f); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})
	return &testGateway{Gateway: g, t: t, reg: reg, logs: logs}
}

// testClock is a gateway clock the test moves (ejections, log sampling windows).
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock { return &testClock{now: time.Unix(1_800_000_000, 0)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (g *testGateway) addr(listener string) string { return g.Addr(listener).String() }

// counter returns the value of a counter (or gauge) series with these labels, 0 if absent.
func (g *testGateway) counter(name string, labels map[string]string) float64 {
	return testkit.Metric(g.t, g.reg, name, labels)
}

// exchange writes msg, half-closes, and returns everything read back until EOF.
func exchange(c *tls.Conn, msg []byte) ([]byte, error) {
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}()
	got, rerr := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return got, werr
	}
	return got, rerr
}

func isAlert(err error, name string) bool {
	return err != nil && strings.Contains(err.Error(), name)
}

func meshYAML(extra string, clusters ...string) string {
	var b strings.Builder
	b.WriteString("listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0" + extra + "}\nclusters:\n")
	for _, c := range clusters {
		b.WriteString(c)
	}
	return b.String()
}

func cluster(name, listener, policy string, endpoints ...string) string {
	s := fmt.Sprintf("  - name: %s\n    listener: %s\n    lb_policy: %s\n    endpoints:\n", name, listener, policy)
	for _, e := range endpoints {
		s += fmt.Sprintf("      - address: %s\n", e)
	}
	return s
}

// helloBytes returns the bytes a crypto/tls client sends as its ClientHello.
func helloBytes(t testing.TB, serverName string, alpn []string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: serverName, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
		a.Close()
	}()
	_, hello, err := sni.Peek(b, sni.PeekOptions{})
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	return hello
}
