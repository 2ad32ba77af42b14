package harness

import (
	"crypto/tls"
	"net"
	"net/url"
	"strings"
	"testing"
)

// The Istio client and server configs check the whole chain to the given root and the peer's
// SPIFFE ID in real handshakes (the client sets InsecureSkipVerify only because crypto/tls would
// otherwise match the SNI against DNS names): a peer of another root, or of the right root with
// another identity, is refused on both sides.
func TestIstioTLSVerifiesChainAndSPIFFEID(t *testing.T) {
	root, err := NewCA("root")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("inter")
	if err != nil {
		t.Fatal(err)
	}
	stray, err := NewCA("stray root")
	if err != nil {
		t.Fatal(err)
	}
	const server, client = "spiffe://cluster.local/ns/x/sa/echo", "spiffe://cluster.local/ns/x/sa/client"
	leaf := func(ca *CA, id string, chain ...*CA) tls.Certificate {
		u, _ := url.Parse(id)
		c, k, err := ca.Issue(LeafOptions{URIs: []*url.URL{u}, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range chain {
			c = append(c, x.CertPEM...)
		}
		cert, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	roots := root.Pool()
	good := func() tls.Certificate { return leaf(inter, server, inter) }
	goodClient := leaf(inter, client, inter)
	cases := []struct {
		name       string
		serverCert tls.Certificate
		clientCert tls.Certificate
		wantErr    string // "" = the handshake succeeds
	}{
		{"both right", good(), goodClient, ""},
		{"server of another root", leaf(stray, server), goodClient, "unknown authority"},
		{"server with another identity", leaf(inter, "spiffe://cluster.local/ns/x/sa/other", inter), goodClient, "want " + server},
		{"server without its intermediate", leaf(inter, server), goodClient, "unknown authority"},
		// crypto/tls's client sends no certificate the server's CA list does not cover.
		{"client of another root", good(), leaf(stray, client), "certificate required|unknown authority"},
		{"client with another identity", good(), leaf(inter, "spiffe://cluster.local/ns/y/sa/client", inter), "want " + client + "|bad certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c1, c2 := net.Pipe()
			defer c1.Close()
			defer c2.Close()
			srvErr := make(chan error, 1)
			go func() {
				s := tls.Server(c2, IstioServerTLS(tc.serverCert, roots, []string{"istio"}, client))
				err := s.Handshake()
				if err == nil {
					_, err = s.Write([]byte("x")) // let the client finish TLS 1.3
				}
				srvErr <- err
				c2.Close()
			}()
			c := tls.Client(c1, IstioClientTLS(tc.clientCert, roots, "outbound_.8443_._.echo.x.svc.cluster.local", []string{"istio"}, server))
			err := c.Handshake()
			if err == nil {
				_, err = c.Read(make([]byte, 1))
			}
			c1.Close()
			sErr := <-srvErr
			if tc.wantErr == "" {
				if err != nil || sErr != nil {
					t.Fatalf("client %v, server %v", err, sErr)
				}
				return
			}
			if err == nil && sErr == nil {
				t.Fatal("handshake succeeded")
			}
			msg := errString(err) + " / " + errString(sErr)
			ok := false
			for _, w := range strings.Split(tc.wantErr, "|") {
				ok = ok || strings.Contains(msg, w)
			}
			if !ok {
				t.Fatalf("errors %q, want one of %q", msg, tc.wantErr)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
