package registrar_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/storetest"
)

// trickyStrings are values a plain YAML scalar would read as something else, or could not hold.
var trickyStrings = []string{
	"", " ", "  ", "true", "True", "FALSE", "no", "NO", "yes", "y", "N", "on", "Off", "null", "Null", "~",
	"0", "-1", "+1", "007", "1e3", "0x1F", "0o17", "0b101", "1_000", "1.5", ".5", "1.", ".inf", "-.Inf", ".NaN",
	"10.0.0.5", "10.0.0.256", "1.2.3", "1.2.3.4.5", "fd00::1", "::1", "fe80::1%eth0", "1:20", "190:20:30",
	"2026-12-05", "2026-12-05T03:45:09Z", "2026-12-05 03:45:09",
	" lead", "trail ", "a: b", "a:b", "http://x.example/p?q=1", "x:", "a #b", "#c", "a#b", "a  b", "a - b",
	"line1\nline2", "\n", "trail\n", "tab\tx", "\r\n", "café", "日本語", "emoji 🎉", "🎉",
	"- x", "-x", "-", "?", "? x", ":", "'single'", "\"double\"", "back\\slash", "{a: 1}", "[1, 2]", "a,b",
	"*alias", "&anchor", "!tag", "!!str", "|", "> folded", "%YAML", "@at", "`tick`", "<<", "---", "...",
	"\u2028", "\u2029", "\u0085", "\u00a0", "\x7f", "\x01", "\x00", "\ufeff", "\ufffe", "<b>&amp;</b>",
	"app.kubernetes.io/name", "a/b/c", "eu/eu-1/a", strings.Repeat("long value ", 40),
}

var (
	yes = true
	no  = false
	t1  = time.Date(2026, 12, 5, 3, 45, 9, 123456789, time.UTC)
	t2  = time.Date(1999, 1, 2, 3, 4, 5, 0, time.UTC)
)

func trickyMap() map[string]string {
	m := map[string]string{strings.Repeat("k", 2000): "long key", "example.com/x.y_z": "v"}
	for i, s := range trickyStrings {
		m[s] = trickyStrings[len(trickyStrings)-1-i]
	}
	return m
}

func trickyEntry() *registrar.WorkloadEntry {
	e := &registrar.WorkloadEntry{}
	e.Name, e.Namespace, e.UID, e.ResourceVersion = "web-10.0.0.5-vm-net", "vm-ns", "1234-abcd", "42"
	e.CreationTimestamp = t1
	e.Labels, e.Annotations = trickyMap(), map[string]string{"ewgate.io/disconnected-at": "2026-12-05T03:45:09.5Z", "no": "~"}
	e.OwnerReferences = []registrar.OwnerReference{
		{APIVersion: "networking.istio.io/v1", Kind: "WorkloadGroup", Name: "web", UID: "u-1", Controller: &yes, BlockOwnerDeletion: &no},
		{APIVersion: "v1", Kind: "true", Name: "null", UID: "0"},
	}
	e.Spec = registrar.WorkloadEntrySpec{
		Address: "10.0.0.5", Ports: map[string]uint32{"http": 8080, "grpc": 0, "true": 4294967295, "1": 1},
		Labels: trickyMap(), Network: "no", Locality: "eu/eu-1/a", Weight: 7, ServiceAccount: " sa ",
	}
	e.Status.Conditions = []registrar.Condition{
		{Type: registrar.ConditionHealthy, Status: "True", LastProbeTime: t1, LastTransitionTime: t2, Reason: "yes", Message: "line1\nline2: x #y"},
		{Type: "Other", Status: "Unknown"},
	}
	return e
}

func trickyGroup() *registrar.WorkloadGroup {
	g := &registrar.WorkloadGroup{}
	g.Name, g.Namespace = "web", "vm-ns"
	g.Spec.Metadata.Labels, g.Spec.Metadata.Annotations = trickyMap(), map[string]string{"": ""}
	g.Spec.Template = registrar.WorkloadEntrySpec{Ports: map[string]uint32{"http": 80}, ServiceAccount: "null"}
	g.Spec.Probe = &registrar.ReadinessProbe{
		InitialDelaySeconds: -1, PeriodSeconds: 5,
		HTTPGet: &registrar.HTTPGetAction{Path: "/healthz?a=b#frag", Port: 8080, Host: "::1", Scheme: "HTTP",
			HTTPHeaders: []registrar.HTTPHeader{{Name: "Host", Value: "a: b"}, {Name: "X-Empty", Value: ""}, {Name: "no", Value: "- x"}}},
		TCPSocket: &registrar.TCPAction{Port: 0},
		Exec:      &registrar.ExecAction{Command: trickyStrings},
		GRPC:      &registrar.GRPCAction{Port: 9090, Service: "~"},
	}
	return g
}

func trickyLeases() []*registrar.Lease {
	a := &registrar.Lease{}
	a.Name, a.Namespace = "gw-a", "ewgate"
	a.Spec = registrar.LeaseSpec{HolderIdentity: "gw-a", LeaseDurationSeconds: 15, AcquireTime: t2, RenewTime: t1}
	b := &registrar.Lease{}
	b.Name = "true" // zero times, no namespace
	return []*registrar.Lease{a, b}
}

// roundTrip checks that o's file, rendered now (from JSON) and as earlier versions wrote it
// (yaml.v3), decodes into o.
func roundTrip[T registrar.Object[T]](t *testing.T, o T, kind string, fresh func() T) {
	t.Helper()
	for _, enc := range []struct {
		name string
		f    func(any, string) ([]byte, error)
	}{{"json-rendered", registrar.RenderYAML}, {"yaml.v3 (earlier versions)", registrar.EncodeYAMLv3}} {
		data, err := enc.f(o, kind)
		if err != nil {
			t.Fatalf("%s %s: %v", enc.name, kind, err)
		}
		back := fresh()
		if err := registrar.DecodeObject(data, kind, back); err != nil {
			t.Fatalf("%s %s does not decode: %v\n%s", enc.name, kind, err, data)
		}
		if !reflect.DeepEqual(back, o) {
			t.Errorf("%s %s does not round-trip:\nwant %+v\ngot  %+v\n%s", enc.name, kind, o, back, data)
		}
	}
}

func TestRenderYAMLRoundTrip(t *testing.T) {
	roundTrip(t, trickyEntry(), registrar.KindWorkloadEntry, func() *registrar.WorkloadEntry { return new(registrar.WorkloadEntry) })
	minimal := &registrar.WorkloadEntry{}
	minimal.Name = "a"
	roundTrip(t, minimal, registrar.KindWorkloadEntry, func() *registrar.WorkloadEntry { return new(registrar.WorkloadEntry) })
	roundTrip(t, trickyGroup(), registrar.KindWorkloadGroup, func() *registrar.WorkloadGroup { return new(registrar.WorkloadGroup) })
	for _, l := range trickyLeases() {
		roundTrip(t, l, registrar.KindLease, func() *registrar.Lease { return new(registrar.Lease) })
	}
	for _, s := range trickyStrings { // one at a time too, so that a failure names its string
		e := &registrar.WorkloadEntry{}
		e.Name, e.Labels, e.Spec.Address = "a", map[string]string{s: s}, s
		data, _ := registrar.RenderYAML(e, registrar.KindWorkloadEntry)
		back := new(registrar.WorkloadEntry)
		if err := registrar.DecodeObject(data, registrar.KindWorkloadEntry, back); err != nil || !reflect.DeepEqual(back, e) {
			t.Errorf("%q does not round-trip (%v):\n%s", s, err, data)
		}
	}
}

// TestRenderYAMLLook: the file reads as `kubectl get -o yaml` shows it: apiVersion and kind
// first, block style, sequences indented under their key, plain strings where unambiguous.
func TestRenderYAMLLook(t *testing.T) {
	g := &registrar.WorkloadGroup{}
	g.Name, g.Namespace, g.CreationTimestamp = "web", "vm-ns", t2
	g.Labels = map[string]string{"app": "web", "version": "1.2"}
	g.OwnerReferences = []registrar.OwnerReference{{APIVersion: "v1", Kind: "X", Name: "x", UID: "u", Controller: &yes}}
	g.Spec.Template = registrar.WorkloadEntrySpec{Address: "10.0.0.5", Ports: map[string]uint32{"http": 8080}}
	g.Spec.Probe = &registrar.ReadinessProbe{Exec: &registrar.ExecAction{Command: []string{"/bin/check", "-v", "a b"}}}
	data, err := registrar.RenderYAML(g, registrar.KindWorkloadGroup)
	if err != nil {
		t.Fatal(err)
	}
	want := `apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: web
  namespace: vm-ns
  creationTimestamp: "1999-01-02T03:04:05Z"
  labels:
    app: web
    version: "1.2"
  ownerReferences:
    - apiVersion: v1
      kind: X
      name: x
      uid: u
      controller: true
spec:
  template:
    address: 10.0.0.5
    ports:
      http: 8080
  probe:
    exec:
      command:
        - /bin/check
        - "-v"
        - a b
`
	if string(data) != want {
		t.Fatalf("rendered:\n%s\nwant:\n%s", data, want)
	}
}

// TestFileStoreLoadsEarlierFiles: files written by earlier versions (yaml.v3's rendering) load.
func TestFileStoreLoadsEarlierFiles(t *testing.T) {
	dir := t.TempDir()
	e, g := trickyEntry(), trickyGroup()
	for _, f := range []struct {
		o    any
		kind string
		path string
	}{
		{e, registrar.KindWorkloadEntry, filepath.Join(dir, "workloadentries", e.Namespace, e.Name+".yaml")},
		{g, registrar.KindWorkloadGroup, filepath.Join(dir, "workloadgroups", g.Namespace, g.Name+".yaml")},
	} {
		data, err := registrar.EncodeYAMLv3(f.o, f.kind)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(f.path), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.path, data, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	s := openFileStore(t, dir)
	gotE, err := s.WorkloadEntries().Get(t.Context(), e.Namespace, e.Name)
	if err != nil {
		t.Fatal(err)
	}
	gotG, err := s.WorkloadGroups().Get(t.Context(), g.Namespace, g.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotE, e) || !reflect.DeepEqual(gotG, g) {
		t.Fatalf("loaded\n%+v\n%+v\nwant\n%+v\n%+v", gotE, gotG, e, g)
	}
}

// FuzzRenderYAML: any strings as label keys and values, annotations, an address and a probe
// command round-trip through the rendered file as they do through the journal's JSON.
func FuzzRenderYAML(f *testing.F) {
	for i, s := range trickyStrings {
		f.Add(s, trickyStrings[(i+1)%len(trickyStrings)])
	}
	f.Fuzz(func(t *testing.T, k, v string) {
		g := &registrar.WorkloadGroup{}
		g.Name, g.Namespace = "web", v
		g.Labels, g.Annotations = map[string]string{k: v}, map[string]string{v: k, k + "/" + v: ""}
		g.Spec.Template.Address = k
		g.Spec.Probe = &registrar.ReadinessProbe{Exec: &registrar.ExecAction{Command: []string{k, v}},
			HTTPGet: &registrar.HTTPGetAction{HTTPHeaders: []registrar.HTTPHeader{{Name: k, Value: v}}}}
		js, err := json.Marshal(g)
		if err != nil {
			t.Fatal(err)
		}
		want := new(registrar.WorkloadGroup) // what the journal holds: invalid UTF-8 is U+FFFD
		if err := json.Unmarshal(js, want); err != nil {
			t.Fatal(err)
		}
		data, err := registrar.RenderYAML(g, registrar.KindWorkloadGroup)
		if err != nil {
			t.Fatal(err)
		}
		back := new(registrar.WorkloadGroup)
		if err := registrar.DecodeObject(data, registrar.KindWorkloadGroup, back); err != nil {
			t.Fatalf("%q, %q: %v\n%s", k, v, err, data)
		}
		if !reflect.DeepEqual(back, want) {
			t.Fatalf("%q, %q do not round-trip:\n%s\n%s", k, v, fmt.Sprintf("%+v\n%+v", want, back), data)
		}
	})
}

// BenchmarkRenderYAML: the cost of a registered entry's file, from its JSON as now and through
// yaml.v3 as before.
func BenchmarkRenderYAML(b *testing.B) {
	e := storetest.Entry("vm-ns", "web-10.0.0.5-vm-net")
	e.ResourceVersion, e.UID, e.CreationTimestamp = "12345", "0b5c7e5e-1f0a-4a47-9d55-7a6c1d0e8b3a", t1
	for _, enc := range []struct {
		name string
		f    func(any, string) ([]byte, error)
	}{{"json-rendered", registrar.RenderYAML}, {"yaml.v3", registrar.EncodeYAMLv3}} {
		b.Run(enc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := enc.f(e, registrar.KindWorkloadEntry); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
