package controlplane

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
)

// wireNameTable parses an encoded istio.networking.nds.v1.NameTable by hand, with the field
// numbers of Istio's pkg/dns/proto/nds.proto, independently of the descriptor under test.
func wireNameTable(t testing.TB, b []byte) map[string]nameInfo {
	t.Helper()
	out := map[string]nameInfo{}
	fields := func(b []byte, fn func(num protowire.Number, v []byte)) {
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 || typ != protowire.BytesType {
				t.Fatalf("unexpected tag %d type %d", num, typ)
			}
			b = b[n:]
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				t.Fatal("bad length")
			}
			b = b[n:]
			fn(num, v)
		}
	}
	fields(b, func(num protowire.Number, entry []byte) {
		if num != 1 { // table
			t.Fatalf("NameTable field %d", num)
		}
		var key string
		var ni nameInfo
		fields(entry, func(num protowire.Number, v []byte) {
			switch num {
			case 1:
				key = string(v)
			case 2:
				fields(v, func(num protowire.Number, v []byte) {
					switch num {
					case 1:
						ni.IPs = append(ni.IPs, string(v))
					case 2:
						ni.Registry = string(v)
					case 3:
						ni.Shortname = string(v)
					case 4:
						ni.Namespace = string(v)
					default:
						t.Fatalf("NameInfo field %d", num)
					}
				})
			default:
				t.Fatalf("map entry field %d", num)
			}
		})
		out[key] = ni
	})
	return out
}

func TestNameTableWireFormat(t *testing.T) {
	in := map[string]nameInfo{
		"web.ns1.svc.cluster.local": {IPs: []string{"240.240.1.2"}, Registry: registryKubernetes, Shortname: "web", Namespace: "ns1"},
		"db.example.com":            {IPs: []string{"10.0.0.1", "fd00::1"}, Registry: registryExternal},
		"a-1.db.example.com":        {IPs: []string{"10.0.0.9"}, Registry: registryExternal},
		"empty.example.com":         {},
	}
	msg := nameTableMessage(in)
	a, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	if a.TypeUrl != NameTableType {
		t.Fatalf("Any type URL %q, want %q", a.TypeUrl, NameTableType)
	}
	if got := wireNameTable(t, a.Value); !reflect.DeepEqual(got, in) {
		t.Fatalf("hand-parsed table %+v, want %+v", got, in)
	}
	// The hand encoding is the deterministic marshal of the same table built field by field
	// through the descriptor, and that message decodes it back.
	ref := reflectNameTable(in)
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(ref)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Value, want) {
		t.Fatalf("hand-encoded table\n%x\nwant the reflective encoding\n%x", a.Value, want)
	}
	back := dynamicpb.NewMessage(ndsTypes().nameTable)
	if err := proto.Unmarshal(a.Value, back); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(back, ref) {
		t.Fatal("the hand-encoded table decodes to another message")
	}
	d := ndsTypes()
	if d.file.Path() != "pkg/dns/proto/nds.proto" || d.nameTable.FullName() != "istio.networking.nds.v1.NameTable" ||
		d.nameInfo.FullName() != "istio.networking.nds.v1.NameTable.NameInfo" {
		t.Fatalf("descriptor names %s %s %s", d.file.Path(), d.nameTable.FullName(), d.nameInfo.FullName())
	}
	if f := d.nameTable.Fields().ByNumber(2); f == nil || f.Name() != "name_info" || f.Message() != d.nameInfo {
		t.Fatal("NameTable.name_info (2) missing")
	}
}

func TestAllocateVIPsDeterministicAndInRange(t *testing.T) {
	vips := netip.MustParsePrefix("240.240.0.0/16")
	var hosts []string
	for i := range 500 {
		hosts = append(hosts, fmt.Sprintf("svc%d.ns.svc.cluster.local", i))
	}
	a := allocateVIPs(hosts, vips, nil)
	rev := slices.Clone(hosts)
	slices.Reverse(rev)
	b := allocateVIPs(rev, vips, nil)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("input order changed the allocation")
	}
	if len(a) != len(hosts) {
		t.Fatalf("%d of %d hosts allocated", len(a), len(hosts))
	}
	seen := map[netip.Addr]string{}
	for h, ip := range a {
		if !vips.Contains(ip) || ip == netip.MustParseAddr("240.240.0.0") || ip == netip.MustParseAddr("240.240.255.255") {
			t.Errorf("%s: %s is not a usable address of %s", h, ip, vips)
		}
		if other, dup := seen[ip]; dup {
			t.Errorf("%s and %s both got %s", h, other, ip)
		}
		seen[ip] = h
	}
	// Adding hosts leaves the others where they were (unless a new one shares a home: not here).
	more := append(slices.Clone(hosts), "new.ns.svc.cluster.local", "a.other.svc.cluster.local")
	c := allocateVIPs(more, vips, nil)
	for _, h := range hosts {
		if c[h] != a[h] {
			t.Errorf("%s moved from %s to %s", h, a[h], c[h])
		}
	}
}

func TestAllocateVIPsCollisions(t *testing.T) {
	// A /29 has 6 usable addresses (.1 to .6): 6 hosts fill it, with collisions probed.
	vips := netip.MustParsePrefix("10.9.0.0/29")
	hosts := []string{"a", "b", "c", "d", "e", "f", "g"}
	got := allocateVIPs(hosts, vips, map[netip.Addr]bool{netip.MustParseAddr("10.9.0.3"): true})
	if len(got) != 5 {
		t.Fatalf("%d hosts allocated in a /29 with one address taken, want 5: %v", len(got), got)
	}
	seen := map[netip.Addr]bool{}
	for h, ip := range got {
		if ip == netip.MustParseAddr("10.9.0.3") || ip == netip.MustParseAddr("10.9.0.0") || ip == netip.MustParseAddr("10.9.0.7") {
			t.Errorf("%s got %s (taken, network or broadcast)", h, ip)
		}
		if seen[ip] {
			t.Errorf("%s duplicated", ip)
		}
		seen[ip] = true
	}
	if !reflect.DeepEqual(got, allocateVIPs(hosts, vips, map[netip.Addr]bool{netip.MustParseAddr("10.9.0.3"): true})) {
		t.Fatal("not deterministic")
	}
	// A /31 uses both addresses.
	two := allocateVIPs([]string{"x", "y", "z"}, netip.MustParsePrefix("10.9.0.8/31"), nil)
	if len(two) != 2 {
		t.Fatalf("/31: %v", two)
	}
}

// reflectNameTable builds the table field by field through the descriptor (what nds.go did
// before the hand encoding): the reference the hand encoding is compared with.
func reflectNameTable(table map[string]nameInfo) proto.Message {
	d := ndsTypes()
	m := dynamicpb.NewMessage(d.nameTable)
	mp := m.Mutable(d.tableF).Map()
	f := d.nameInfo.Fields()
	for h, ni := range table {
		info := dynamicpb.NewMessage(d.nameInfo)
		ips := info.Mutable(f.ByName("ips")).List()
		for _, ip := range ni.IPs {
			ips.Append(protoreflect.ValueOfString(ip))
		}
		for name, v := range map[protoreflect.Name]string{"registry": ni.Registry, "shortname": ni.Shortname, "namespace": ni.Namespace} {
			if v != "" {
				info.Set(f.ByName(name), protoreflect.ValueOfString(v))
			}
		}
		mp.Set(protoreflect.ValueOfString(h).MapKey(), protoreflect.ValueOfMessage(info))
	}
	return m
}
