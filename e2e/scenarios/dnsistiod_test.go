package scenarios

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Issue 11, under istiod: the name table istiod pushes (type
// istio.networking.nds.v1.NameTable, asked for by an agent with DNS capture on) passes through
// ewgate's 15012 unchanged, like every other resource. A real pilot-agent onboarded through
// ewgate to a real istiod resolves, with its own DNS proxy, a ServiceEntry host that only istiod
// knows to the address the ServiceEntry gives it.
func TestVMThroughEwgateResolvesIstiodNames(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns, _ := vmSetup(t, "dnsistiod")
	const vip = "10.99.0.7"
	backend, host := echoService(t, ctx, ns, vip)
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	front := startFrontOfIstiod(t, ns, "ewgate-e2e-dns")
	dnsAddr := freeAddr(t)
	vm := front.vm(t, harness.VMOptions{Name: "dns2", Namespace: ns, ServiceAccount: "vm", Group: "web", IP: "127.0.9.95", Token: tok,
		Env: []string{"ISTIO_META_DNS_CAPTURE=true", "DNS_PROXY_ADDR=" + dnsAddr}})
	if _, err := vm.WaitCert(harness.Context(t, 60*time.Second)); err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s", err, front.Gw.Proc.Tail(40))
	}
	// The agent asks for the name table once a local xDS client has asked for listeners.
	client := vm.StartXDSClient(t, ctx, host+":"+strconv.Itoa(backend.Port), "health")

	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr)
	}}
	if err := vm.Proc.WaitFor(harness.Context(t, 60*time.Second), 100*time.Millisecond, func() error {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		addrs, err := r.LookupHost(lctx, host)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0] != vip {
			return fmt.Errorf("%s resolves to %v, want [%s]", host, addrs, vip)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n---- agent ----\n%s\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, vm.Proc.Tail(30), client.Tail(10), front.Gw.Proc.Tail(30))
	}
}
