package registrar_test

import (
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
)

// TestConnectWritesIstioEntry checks every part of the entry istiod would have written, plus
// ewgate's identity annotations.
func TestConnectWritesIstioEntry(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	req := request(1, "10.0.0.1")
	req.Node.HasReadinessProbe = true
	req.Node.Labels["tier"] = "vm"
	s := g.connect(t, req)
	registered(t, s)
	got := e.mustEntry(entry1)
	group, _ := e.store.WorkloadGroups().Get(t.Context(), ns, "web")

	wantLabels := map[string]string{"app": "web", "tier": "vm", "from-template": "yes", "version": "v1"}
	if !maps.Equal(got.Spec.Labels, wantLabels) {
		t.Errorf("spec labels %v, want %v", got.Spec.Labels, wantLabels)
	}
	vm := got.Labels[registrar.LabelVM]
	delete(got.Labels, registrar.LabelVM)
	if !maps.Equal(got.Labels, wantLabels) || len(vm) != 32 {
		t.Errorf("labels %v (%s=%q), want %v and a 32-digit hash", got.Labels, registrar.LabelVM, vm, wantLabels)
	}
	if got.Spec.Address != "10.0.0.1" || got.Spec.Network != "vm-net" || got.Spec.Locality != "eu/eu-1" ||
		got.Spec.Ports["http"] != 8080 || got.Spec.ServiceAccount != "web-sa" {
		t.Errorf("spec %+v", got.Spec)
	}
	a := got.Annotations
	if a[registrar.AnnotationAutoRegistrationGroup] != "web" || a[registrar.AnnotationWorkloadController] != "gw-a" ||
		a["team"] != "payments" || a[registrar.AnnotationHealthChecksEnabled] != "true" ||
		a[registrar.AnnotationIdentity] != ident().SPIFFEID || a[registrar.AnnotationDisconnectedAt] != "" {
		t.Errorf("annotations %v", a)
	}
	if at, err := time.Parse(time.RFC3339Nano, a[registrar.AnnotationConnectedAt]); err != nil || !at.Equal(t0) {
		t.Errorf("connectedAt %q (%v), want %s", a[registrar.AnnotationConnectedAt], err, t0)
	}
	if a[registrar.AnnotationNode] != "sidecar~vm-1.vm-ns~vm-ns.svc.cluster.local" {
		t.Errorf("node key %q keeps the IP", a[registrar.AnnotationNode])
	}
	if len(got.OwnerReferences) != 1 {
		t.Fatalf("owners %+v", got.OwnerReferences)
	}
	o := got.OwnerReferences[0]
	if o.APIVersion != "networking.istio.io/v1" || o.Kind != "WorkloadGroup" || o.Name != "web" ||
		o.UID != group.UID || o.Controller == nil || !*o.Controller {
		t.Errorf("owner %+v", o)
	}
	regs := g.Registrations()
	if len(regs) != 1 || regs[0].Entry != entry1 || regs[0].State != "registered" || !regs[0].Owned || regs[0].Streams != 1 {
		t.Fatalf("registrations %+v", regs)
	}
	if _, err := json.Marshal(regs); err != nil {
		t.Fatal(err)
	}
}

func TestConnectRefusals(t *testing.T) {
	e := newEnv(t)
	other := webGroup()
	other.Name, other.Namespace = "web", "other-ns"
	e.putGroup(other)
	g := e.start("gw-a", func(c *registrar.Config) { c.ReservedLabels = append(registrar.DefaultReservedLabels, "owner") })
	cases := []struct {
		name   string
		change func(r *registrar.Request)
		want   error
	}{
		{"no group", func(r *registrar.Request) { r.Node.AutoRegisterGroup = "db" }, registrar.ErrGroupNotFound},
		{"group in another namespace", func(r *registrar.Request) { r.Identity.Namespace = "third-ns" }, registrar.ErrGroupNotFound},
		{"service account", func(r *registrar.Request) { r.Identity.ServiceAccount = "db-sa" }, registrar.ErrDenied},
		{"cluster", func(r *registrar.Request) { r.Node.ClusterID = "c2" }, registrar.ErrDenied},
		{"reserved prefix", func(r *registrar.Request) { r.Node.Labels["security.istio.io/tlsMode"] = "disabled" }, registrar.ErrReservedLabel},
		{"reserved network label", func(r *registrar.Request) { r.Node.Labels["topology.istio.io/network"] = "x" }, registrar.ErrReservedLabel},
		{"reserved exact key", func(r *registrar.Request) { r.Node.Labels["owner"] = "me" }, registrar.ErrReservedLabel},
		{"no instance ip", func(r *registrar.Request) { r.Node.InstanceIPs = nil }, registrar.ErrInvalidNode},
		{"bad instance ip", func(r *registrar.Request) { r.Node.InstanceIPs = []string{"vm.example"} }, registrar.ErrInvalidNode},
		{"no group metadata", func(r *registrar.Request) { r.Node.AutoRegisterGroup = "" }, registrar.ErrInvalidNode},
		{"bad network", func(r *registrar.Request) { r.Node.Network = "net/../x y" }, registrar.ErrInvalidNode},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := request(1, "10.0.0.1")
			c.change(&req)
			_, err := g.Connect(t.Context(), req)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	g.settle(t)
	if names := e.entryNames(); len(names) != 0 {
		t.Fatalf("refused connects wrote %v", names)
	}
}

func TestAddressPolicies(t *testing.T) {
	cases := []struct {
		name    string
		cfg     func(*registrar.Config)
		ip      string
		want    string // entry address; "" = refused
		claimed string // the ewgate.io/claimed-address annotation
	}{
		{"claimed", nil, "10.0.0.1", "10.0.0.1", ""},
		{"observed behind NAT", func(c *registrar.Config) { c.AddressPolicy = registrar.AddressObserved }, "10.0.0.1", "203.0.113.9", "10.0.0.1"},
		{"in cidr", inCIDRs("10.0.0.0/24", "fd00::/64"), "10.0.0.1", "10.0.0.1", ""},
		{"in v6 cidr", inCIDRs("10.0.0.0/24", "fd00::/64"), "fd00::7", "fd00::7", ""},
		{"outside cidr", inCIDRs("10.0.0.0/24"), "10.0.1.1", "", ""},
		{"v4-mapped claimed", inCIDRs("10.0.0.0/24"), "::ffff:10.0.0.1", "10.0.0.1", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			var muts []func(*registrar.Config)
			if c.cfg != nil {
				muts = append(muts, c.cfg)
			}
			g := e.start("gw-a", muts...)
			s, err := g.Connect(t.Context(), request(1, c.ip))
			if c.want == "" {
				if !errors.Is(err, registrar.ErrAddressRefused) {
					t.Fatalf("got %v, want ErrAddressRefused", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			registered(t, s)
			name := registrar.EntryName("web", netip.MustParseAddr(c.want), "vm-net")
			got := e.mustEntry(name)
			if got.Spec.Address != c.want || got.Annotations[registrar.AnnotationClaimedAddress] != c.claimed {
				t.Fatalf("address %s claimed %q, want %s %q", got.Spec.Address, got.Annotations[registrar.AnnotationClaimedAddress], c.want, c.claimed)
			}
		})
	}
}

func inCIDRs(cidrs ...string) func(*registrar.Config) {
	return func(c *registrar.Config) {
		c.AddressPolicy, c.AllowedCIDRs = registrar.AddressClaimedInCIDRs, cidrs
	}
}

func TestEntryName(t *testing.T) {
	long := strings.Repeat("g", 260)
	cases := []struct {
		group, ip, network, want string
	}{
		{"web", "10.0.0.5", "", "web-10.0.0.5"},
		{"web", "10.0.0.5", "vm-net", "web-10.0.0.5-vm-net"},
		{"web", "fd00::1", "", "web-fd00--1"},
		{"web", "2001:db8::a:1", "Net_1", "web-2001-db8--a-1-net-1"},
		{"web", "fe80::1%eth0", "", "web-fe80--1"},
		// cut from the front to 253, as istiod does; the cut leaves no leading '-' or '.'
		{long, "10.0.0.5", "", strings.Repeat("g", 253-len("-10.0.0.5")) + "-10.0.0.5"},
		{strings.Repeat("ab-", 100), "10.0.0.5", "", strings.Repeat("ab-", 100)[57:] + "-10.0.0.5"},
	}
	for _, c := range cases {
		got := registrar.EntryName(c.group, netip.MustParseAddr(c.ip), c.network)
		if got != c.want {
			t.Errorf("EntryName(%.10s…, %s, %s) = %q, want %q", c.group, c.ip, c.network, got, c.want)
		}
		if len(got) > 253 {
			t.Errorf("EntryName longer than 253: %d", len(got))
		}
	}
}

// TestIPv6Registration writes an entry for an IPv6 VM end to end.
func TestIPv6Registration(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	registered(t, g.connect(t, request(1, "fd00::1")))
	got := e.mustEntry("web-fd00--1-vm-net")
	if got.Spec.Address != "fd00::1" {
		t.Fatalf("address %s", got.Spec.Address)
	}
}

// FuzzEntryName: whatever the group, address and network, the name is a valid Kubernetes name
// of at most 253 characters, and the same inputs give the same name.
func FuzzEntryName(f *testing.F) {
	f.Add("web", []byte{10, 0, 0, 5}, "vm-net")
	f.Add(strings.Repeat("ab-", 100), []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "Net_1")
	f.Add("-.-", []byte{1, 2, 3, 4}, "..")
	f.Fuzz(func(t *testing.T, group string, ip []byte, network string) {
		addr, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		name := registrar.EntryName(group, addr, network)
		if len(name) > 253 || name != registrar.EntryName(group, addr, network) {
			t.Fatalf("EntryName(%q, %s, %q) = %q", group, addr, network, name)
		}
		for label := range strings.SplitSeq(name, ".") {
			if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
				t.Fatalf("EntryName(%q, %s, %q) = %q: bad label %q", group, addr, network, name, label)
			}
			for _, c := range label {
				if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
					t.Fatalf("EntryName(%q, %s, %q) = %q: bad character %q", group, addr, network, name, c)
				}
			}
		}
	})
}
