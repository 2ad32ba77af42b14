package scenarios

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Scenario: sidecar DNS for a VM, standalone. A real pilot-agent with its DNS proxy on
// (ISTIO_META_DNS_CAPTURE=true, DNS_PROXY_ADDR on a loopback port) onboards through ewgate's 15012
// against the built-in control plane. Once its ADS stream is up (a local xDS client connects and
// sends its first listener request, after which the agent asks for
// type.googleapis.com/istio.networking.nds.v1.NameTable with no names), Go's resolver pointed at
// the agent's DNS port:
//
//   - resolves a mesh host to the service's configured address, and its Kubernetes short form
//     <name>.<namespace> (the table marks <name>.<namespace>.svc.* hosts as Kubernetes entries);
//   - gets, for a name not in the table, the answer of the forward path: the agent hands the
//     query to the nameservers of the system resolv.conf and returns their answer as is. The name
//     is under .invalid (RFC 6761), so the upstream answers NXDOMAIN, a code the agent never
//     produces itself (table names are answered NOERROR, even with no address of the asked
//     family); on a machine whose resolver cannot be reached the agent answers SERVFAIL and logs
//     "upstream failure", which is accepted as the same path. /etc/hosts names such as localhost
//     would prove nothing: Go's resolver answers them from the file without asking the agent;
//   - resolves a service added to ewgate's config file afterwards, with no restart (ewgate
//     reloads the file, the control plane pushes a new table on the same stream), to a virtual
//     IP of control_plane.dns.vip_range.
func TestStandaloneVMResolvesMeshNamesThroughAgentDNS(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	const (
		vmIP     = "127.0.9.70"
		webAddr  = "10.77.0.5"
		vipRange = "240.241.0.0/24"
	)
	backend := startHealthServer(t, vmIP)
	s := startStandaloneEwgate(t, standaloneOptions{
		prefix: "dns", clusterID: "standalone-dns", instance: "ewgate-e2e-dns", webPort: backend.Port,
		controlPlane: "  dns: {vip_range: " + vipRange + "}\n",
		webService:   "    addresses: [" + webAddr + "]\n",
		reloadEvery:  100 * time.Millisecond,
	})
	ns, gw, webHost := s.ns, s.gw, s.webHost
	addedHost := "added." + ns + ".svc.cluster.local"

	dnsAddr := freeAddr(t)
	vm := s.vm(t, "dns1", vmIP, "ISTIO_META_DNS_CAPTURE=true", "DNS_PROXY_ADDR="+dnsAddr)
	if _, err := vm.WaitCert(harness.Context(t, 60*time.Second)); err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s", err, gw.Proc.Tail(40))
	}
	// The agent opens ADS (and asks for the name table) once a local xDS client sends LDS.
	client := vm.StartXDSClient(t, ctx, fmt.Sprintf("%s:%d", webHost, backend.Port), "health")

	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr)
	}}
	lookup := func(host string) ([]string, error) {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return r.LookupHost(lctx, host)
	}
	waitResolves := func(host string, ok func([]string) bool) []string {
		t.Helper()
		var got []string
		if err := vm.Proc.WaitFor(harness.Context(t, 60*time.Second), 100*time.Millisecond, func() error {
			addrs, err := lookup(host)
			if err != nil {
				return err
			}
			if !ok(addrs) {
				return fmt.Errorf("%s resolves to %v", host, addrs)
			}
			got = addrs
			return nil
		}); err != nil {
			t.Fatalf("%v\n---- agent ----\n%s\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, vm.Proc.Tail(30), client.Tail(10), gw.Proc.Tail(30))
		}
		return got
	}
	only := func(want string) func([]string) bool {
		return func(a []string) bool { return len(a) == 1 && a[0] == want }
	}
	waitResolves(webHost, only(webAddr))
	// The VM itself, registered behind the service, has a name of its own under the host.
	waitResolves("web-"+strings.ReplaceAll(vmIP, ".", "-")+"-vmnet."+webHost, only(vmIP))
	if got, err := lookup("web." + ns); err != nil || !only(webAddr)(got) {
		t.Errorf("web.%s (Kubernetes short form): %v %v, want [%s]", ns, got, err, webAddr)
	}

	// A name outside the table: forwarded.
	rcode, aa, err := rawQuery(ctx, dnsAddr, "ewgate-e2e-"+ns+".invalid.")
	switch {
	case err != nil:
		t.Errorf("query for an external name: %v", err)
	case aa:
		t.Errorf("an external name was answered authoritatively (rcode %d): the agent answered from its table", rcode)
	case rcode == rcodeNXDomain:
		t.Logf("external name: NXDOMAIN from the system resolver, through the agent")
	case rcode == rcodeServFail && strings.Contains(vm.Proc.Tail(200), "upstream failure"):
		t.Logf("external name: the agent forwarded it, the system resolver is unreachable here (SERVFAIL)")
	default:
		t.Errorf("external name: rcode %d, want NXDOMAIN from the upstream (or SERVFAIL with the agent's upstream failure)", rcode)
	}

	// A service added to the file: resolvable with no restart, at a VIP of the range.
	if _, err := lookup(addedHost); err == nil {
		t.Fatalf("%s resolves before it is configured", addedHost)
	}
	if err := gw.RewriteConfig(s.config(fmt.Sprintf(`  - name: added
    namespace: %s
    hosts: [%s]
    ports: [{number: 8080, name: http, protocol: HTTP}]
    endpoints: [{address: 127.0.0.1, ports: {http: 1}}]
`, ns, addedHost))); err != nil {
		t.Fatal(err)
	}
	prefix := netip.MustParsePrefix(vipRange)
	got := waitResolves(addedHost, func(a []string) bool {
		if len(a) != 1 {
			return false
		}
		ip, err := netip.ParseAddr(a[0])
		return err == nil && prefix.Contains(ip)
	})
	t.Logf("%s -> %v (vip_range %s); %s -> %s", addedHost, got, vipRange, webHost, webAddr)
	if got, err := lookup(webHost); err != nil || !only(webAddr)(got) {
		t.Errorf("%s after the reload: %v %v", webHost, got, err)
	}
}

const (
	rcodeServFail = 2
	rcodeNXDomain = 3
)

// rawQuery sends one A query over UDP and returns the response's rcode and AA bit (Go's
// resolver does not expose either). The agent's forward has a 5 s upstream timeout.
func rawQuery(ctx context.Context, server, name string) (rcode int, aa bool, err error) {
	var q []byte
	q = binary.BigEndian.AppendUint16(q, 0x5a5a) // ID
	q = binary.BigEndian.AppendUint16(q, 0x0100) // RD
	q = binary.BigEndian.AppendUint16(q, 1)      // QDCOUNT
	q = append(q, 0, 0, 0, 0, 0, 0)
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	q = append(q, 0, 0, 1, 0, 1) // root, type A, class IN
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", server)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		return 0, false, err
	}
	if _, err := c.Write(q); err != nil {
		return 0, false, err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return 0, false, err
	}
	if n < 12 || binary.BigEndian.Uint16(buf) != 0x5a5a {
		return 0, false, fmt.Errorf("bad response (%d bytes)", n)
	}
	flags := binary.BigEndian.Uint16(buf[2:])
	return int(flags & 0xf), flags&0x0400 != 0, nil
}
