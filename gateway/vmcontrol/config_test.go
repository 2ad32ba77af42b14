package vmcontrol_test

import (
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/config/field"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

func TestValidateNamesTheField(t *testing.T) {
	p := newPKI(t)
	base := func() vmcontrol.Config {
		return vmcontrol.Config{TLS: vmcontrol.TLSConfig{CertFile: p.certFile, KeyFile: p.keyFile},
			Upstreams: []vmcontrol.UpstreamConfig{{Cluster: "c1", Builtin: true}}}
	}
	cases := []struct {
		name   string
		mutate func(*vmcontrol.Config)
		path   string
	}{
		{"valid", func(*vmcontrol.Config) {}, ""},
		{"no upstreams", func(c *vmcontrol.Config) { c.Upstreams = nil }, "upstreams"},
		{"bad address", func(c *vmcontrol.Config) { c.Address = "nowhere" }, "address"},
		{"missing cert", func(c *vmcontrol.Config) { c.TLS.CertFile = "" }, "tls.cert_file"},
		{"client certs mode", func(c *vmcontrol.Config) { c.TLS.ClientCerts = "maybe" }, "tls.client_certs"},
		{"duplicate cluster", func(c *vmcontrol.Config) {
			c.Upstreams = append(c.Upstreams, vmcontrol.UpstreamConfig{Cluster: "c1", Address: "istiod:15012"})
		}, "upstreams[1].cluster"},
		{"no address", func(c *vmcontrol.Config) { c.Upstreams[0].Builtin = false }, "upstreams[0].address"},
		{"builtin with address", func(c *vmcontrol.Config) { c.Upstreams[0].Address = "x:1" }, "upstreams[0].builtin"},
		{"identity mode", func(c *vmcontrol.Config) { c.Upstreams[0].Identity = "trust-me" }, "upstreams[0].identity"},
		{"plaintext forward", func(c *vmcontrol.Config) {
			c.Upstreams[0] = vmcontrol.UpstreamConfig{Cluster: "c1", Address: "127.0.0.1:15010", Plaintext: true}
		}, "upstreams[0].plaintext"},
		{"per VM above total", func(c *vmcontrol.Config) { c.Limits.MaxStreams, c.Limits.MaxStreamsPerVM = 5, 10 }, "limits.max_streams_per_vm"},
		{"former name above total", func(c *vmcontrol.Config) { c.Limits.MaxStreams, c.Limits.MaxStreamsPerID = 5, 10 }, "limits.max_streams_per_vm"},
		{"former and new name", func(c *vmcontrol.Config) { c.Limits.MaxStreamsPerID, c.Limits.MaxStreamsPerVM = 8, 16 }, "limits.max_streams_per_identity"},
		{"huge headers", func(c *vmcontrol.Config) { c.Limits.MaxHeaderBytes = 32 << 20 }, "limits.max_header_bytes"},
		{"per source above total", func(c *vmcontrol.Config) { c.Limits.MaxConnections, c.Limits.MaxConnectionsPerSource = 10, 20 }, "limits.max_connections_per_source"},
		{"no streams per connection", func(c *vmcontrol.Config) { c.Limits.MaxStreamsPerConnection = -1 }, "limits.max_streams_per_connection"},
		{"tiny messages", func(c *vmcontrol.Config) { c.Limits.MaxMessageBytes = 10 }, "limits.max_message_bytes"},
		{"keepalive", func(c *vmcontrol.Config) { c.Limits.KeepaliveMinTime = time.Millisecond }, "limits.keepalive_min_time"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(&c)
			c.SetDefaults()
			err := c.Validate()
			if tc.path == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var fe *field.Error
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.path+": ") {
				t.Fatalf("got %v, want an error at %s", err, tc.path)
			}
		})
	}
}

func TestFormerStreamLimitNameIsAccepted(t *testing.T) {
	c := vmcontrol.Config{Limits: vmcontrol.LimitsConfig{MaxStreamsPerID: 7}}
	c.SetDefaults()
	if c.Limits.MaxStreamsPerVM != 7 {
		t.Fatalf("max_streams_per_identity: 7 gave max_streams_per_vm %d, want 7", c.Limits.MaxStreamsPerVM)
	}
	d := vmcontrol.Config{}
	d.SetDefaults()
	l := d.Limits
	if l.MaxStreamsPerVM != 32 || l.MaxHeaderBytes != 64<<10 || l.MaxStreamsPerConnection != 100 ||
		l.MaxConnections != 10000 || l.MaxConnectionsPerSource != 64 {
		t.Fatalf("defaults: %+v", l)
	}
}

func TestServingCertificateIsReloaded(t *testing.T) {
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{TLS: vmcontrol.TLSConfig{CheckInterval: time.Millisecond},
		Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, "")}}, vmcontrol.Options{})
	newCA := testkit.NewCA(t, "renewed serving CA")
	certFile, keyFile := newCA.Server(t, serverName).WriteFiles(t, t.TempDir(), "renewed")
	for _, f := range [][2]string{{certFile, p.certFile}, {keyFile, p.keyFile}} {
		b, _ := os.ReadFile(f[0])
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, "the renewed certificate is served", func() bool {
		c, err := tls.Dial("tcp", g.addr, &tls.Config{RootCAs: newCA.Pool(), ServerName: serverName, NextProtos: []string{"h2"}})
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}
