package config

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// twoClusters is a valid file with a VM control endpoint fronting cluster-a and cluster-b, a
// registrar, and a kubeconfig per cluster; %s is appended (more keys, or replacements below).
func twoClusters(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key", "a.kubeconfig", "b.kubeconfig"} {
		testkit.WriteFile(t, dir, f, []byte("x")) // checked for existence only
	}
	testkit.WriteFile(t, dir, "jwks.json", []byte(testkit.NewIssuer(t, "https://a.test").JWKS(t)))
	return fmt.Sprintf(`authn:
  issuers:
    - {issuer: https://a.test, cluster: cluster-a, jwks_file: %[1]s/jwks.json}
    - {issuer: https://b.test, cluster: cluster-b, jwks_file: %[1]s/jwks.json}
control:
  tls: {cert_file: %[1]s/tls.crt, key_file: %[1]s/tls.key}
  upstreams:
    - {cluster: cluster-a, address: istiod-a.test:15012}
    - {cluster: cluster-b, address: istiod-b.test:15012}
registrar: {instance: gw-1}
kubernetes:
  clusters:
    - {cluster: cluster-a, kubeconfig: %[1]s/a.kubeconfig}
    - {cluster: cluster-b, kubeconfig: %[1]s/b.kubeconfig}
`, filepath.ToSlash(dir))
}

func TestPerClusterStores(t *testing.T) {
	y := twoClusters(t) + `workload_groups:
  - {cluster: cluster-a, metadata: {name: web, namespace: vms}}
  - {cluster: cluster-b, metadata: {name: web, namespace: vms}}
  - {cluster: cluster-b, metadata: {name: db, namespace: vms}}
`
	f, err := Parse([]byte(y), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !f.PerClusterStores() || len(f.Kubernetes.Clusters) != 2 || f.Kubernetes.Clusters[1].Cluster != "cluster-b" ||
		!strings.HasSuffix(f.Kubernetes.Clusters[1].Kubeconfig, "/b.kubeconfig") {
		t.Fatalf("kubernetes = %+v", f.Kubernetes)
	}
	names := func(cluster string) (out []string) {
		for _, g := range f.GroupsFor(cluster) {
			out = append(out, g.Namespace+"/"+g.Name)
		}
		return out
	}
	if a, b := names("cluster-a"), names("cluster-b"); fmt.Sprint(a) != "[vms/web]" || fmt.Sprint(b) != "[vms/web vms/db]" {
		t.Fatalf("groups of cluster-a %v, of cluster-b %v; want [vms/web] and [vms/web vms/db]", a, b)
	}
	if all := names(""); len(all) != 3 {
		t.Fatalf("groups of the one store: %v, want all three", all)
	}
}

// The one store of every cluster keeps working as before: groups need no cluster, and one that
// names a cluster must name an upstream's.
func TestOneStoreForEveryCluster(t *testing.T) {
	one := strings.Replace(twoClusters(t), "  clusters:\n", "  kubeconfig: /dev/null\n  clustersX:\n", 1)
	one = one[:strings.Index(one, "  clustersX:")]
	f, err := Parse([]byte(one+"workload_groups:\n  - {metadata: {name: web, namespace: vms}}\n  - {cluster: cluster-b, metadata: {name: db, namespace: vms}}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if f.PerClusterStores() || len(f.GroupsFor("")) != 2 {
		t.Fatalf("per cluster %v, groups %v; want one store with both groups", f.PerClusterStores(), f.GroupsFor(""))
	}
	_, err = Parse([]byte(one+"workload_groups:\n  - {cluster: cluster-c, metadata: {name: web, namespace: vms}}\n"), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), `t.yaml:14: workload_groups[0].cluster: "cluster-c" is not the cluster of any control.upstreams entry`) {
		t.Fatalf("error %v; want workload_groups[0].cluster refused", err)
	}
	_, err = Parse([]byte(one+"workload_groups:\n  - {metadata: {name: web, namespace: vms}}\n  - {cluster: cluster-b, metadata: {name: web, namespace: vms}}\n"), "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "workload_groups[1].metadata.name: vms/web is listed twice") {
		t.Fatalf("error %v; want the group listed twice in the one store", err)
	}
}

func TestPerClusterStoresValidation(t *testing.T) {
	tests := []struct {
		name     string
		old, new string // replaced in twoClusters
		more     string // appended
		want     []string
	}{
		{name: "kubeconfig and clusters", old: "kubernetes:\n", new: "kubernetes:\n  kubeconfig: /etc/one.kubeconfig\n",
			want: []string{"t.yaml:12: kubernetes.kubeconfig: one store for every cluster (kubeconfig) or a store per cluster (clusters), not both"}},
		{name: "cluster required", old: "{cluster: cluster-b, kubeconfig", new: "{kubeconfig",
			want: []string{"kubernetes.clusters[1].cluster: required", "control.upstreams[1]: cluster-b has no registration store: add kubernetes.clusters[] for it"}},
		{name: "cluster twice", old: "{cluster: cluster-b, kubeconfig", new: "{cluster: cluster-a, kubeconfig",
			want: []string{`t.yaml:14: kubernetes.clusters[1].cluster: "cluster-a" duplicates kubernetes.clusters[0].cluster`,
				"control.upstreams[1]: cluster-b has no registration store"}},
		{name: "not an upstream's cluster", more: "    - {cluster: cluster-c, kubeconfig: /etc/c.kubeconfig}\n",
			want: []string{`t.yaml:15: kubernetes.clusters[2].cluster: "cluster-c" is not the cluster of any control.upstreams entry, so no VM could be registered here: want one of cluster-a, cluster-b`}},
		{name: "upstream without a store", old: "    - {cluster: cluster-b, kubeconfig", new: "    # {cluster: cluster-b, kubeconfig",
			want: []string{"t.yaml:9: control.upstreams[1]: cluster-b has no registration store: add kubernetes.clusters[] for it"}},
		{name: "one API server for two clusters", old: "/b.kubeconfig}", new: "/a.kubeconfig}",
			want: []string{"kubernetes.clusters[1].kubeconfig: kubernetes.clusters[0] uses", "each cluster's store is its own API server"}},
		{name: "group without a cluster", more: "workload_groups:\n  - {metadata: {name: web, namespace: vms}}\n",
			want: []string{"t.yaml:16: workload_groups[0].cluster: required with a store per cluster: the cluster whose API server holds this group (one of cluster-a, cluster-b)"}},
		{name: "group of a cluster without a store", more: "workload_groups:\n  - {cluster: cluster-c, metadata: {name: web, namespace: vms}}\n",
			want: []string{`workload_groups[0].cluster: "cluster-c" has no registration store: want one of kubernetes.clusters[].cluster (cluster-a, cluster-b)`}},
		{name: "group twice in one cluster", more: "workload_groups:\n  - {cluster: cluster-a, metadata: {name: web, namespace: vms}}\n  - {cluster: cluster-a, metadata: {name: web, namespace: vms}}\n",
			want: []string{"workload_groups[1].metadata.name: vms/web is listed twice for cluster cluster-a"}},
		{name: "stores per cluster need control", old: "control:\n", new: "controlX:\n",
			want: []string{"kubernetes.clusters: a store per cluster follows the clusters of control.upstreams: configure control as well"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := twoClusters(t)
			if tt.old != "" {
				if !strings.Contains(y, tt.old) {
					t.Fatalf("%q is not in the base file", tt.old)
				}
				y = strings.Replace(y, tt.old, tt.new, 1)
			}
			y += tt.more
			_, err := Parse([]byte(y), "t.yaml")
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}
