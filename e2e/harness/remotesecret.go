package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// How each istiod of a MultiCluster reads the other cluster: a remote secret holding an inline
// kubeconfig (Istio's istioctl create-remote-secret shape), and /debug/clusterz to see it synced.

// createRemoteReader creates what the other cluster's istiod reads this cluster as: service
// account istio-system/istio-reader-service-account bound to a ClusterRole like Istio's
// istio-reader-clusterrole (read everything; create tokenreviews and subjectaccessreviews, for
// tokens of this cluster presented to the other istiod).
func createRemoteReader(ctx context.Context, api *APIServer) error {
	if _, err := api.CreateServiceAccount(ctx, IstioNamespace, remoteReaderSA); err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: remoteReaderRole},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
			{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
		},
	}
	if _, err := api.Kube.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("harness: reader role: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: remoteReaderRole},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: remoteReaderRole},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: remoteReaderSA, Namespace: IstioNamespace}},
	}
	if _, err := api.Kube.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("harness: reader binding: %w", err)
	}
	return nil
}

// RemoteKubeconfig is the kubeconfig istioctl create-remote-secret writes: cluster, context and
// user all named id, the server's CA and a bearer token inline (istiod refuses file references,
// exec and most auth providers in a remote secret: pkg/kube sanitizeKubeConfig).
func RemoteKubeconfig(id string, api *APIServer, token string) ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[id] = &clientcmdapi.Cluster{Server: api.URL, CertificateAuthorityData: api.CAPEM}
	cfg.AuthInfos[id] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[id] = &clientcmdapi.Context{Cluster: id, AuthInfo: id}
	cfg.CurrentContext = id
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return nil, fmt.Errorf("harness: remote kubeconfig %s: %w", id, err)
	}
	return b, nil
}

// createRemoteSecret writes into `into` the remote secret of cluster id (served by remote): a
// Secret in istio-system labelled istio/multiCluster=true whose data key is the cluster ID and
// whose value is a kubeconfig with a token of remote's reader service account.
func createRemoteSecret(ctx context.Context, into *APIServer, id string, remote *APIServer) error {
	token, err := remote.Token(ctx, IstioNamespace, remoteReaderSA, 24*time.Hour)
	if err != nil {
		return err
	}
	kc, err := RemoteKubeconfig(id, remote, token)
	if err != nil {
		return err
	}
	_, err = into.Kube.CoreV1().Secrets(IstioNamespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        remoteSecretPrefix + id,
			Labels:      map[string]string{MultiClusterLabel: "true"},
			Annotations: map[string]string{"networking.istio.io/cluster": id},
		},
		Data: map[string][]byte{id: kc},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("harness: remote secret for %s: %w", id, err)
	}
	return nil
}

// RemoteCluster is one line of istiod's /debug/clusterz.
type RemoteCluster struct {
	ID         string `json:"id"`
	SecretName string `json:"secretName"`
	SyncStatus string `json:"syncStatus"` // syncing, synced, timeout, closed
}

// RemoteClusters lists the clusters istiod reads (its own first), from /debug/clusterz.
func (i *Istiod) RemoteClusters(ctx context.Context) ([]RemoteCluster, error) {
	body, err := httpGetBody(ctx, "http://"+i.HTTPAddr+"/debug/clusterz")
	if err != nil {
		return nil, fmt.Errorf("harness: istiod clusterz: %w", err)
	}
	var out []RemoteCluster
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return nil, fmt.Errorf("harness: istiod clusterz: %w: %s", err, body)
	}
	return out, nil
}

// WaitRemoteSynced waits until m's istiod reports cluster id (from a remote secret) synced.
func (m *Member) WaitRemoteSynced(ctx context.Context, id string) error {
	var last []RemoteCluster
	err := m.Istiod.Proc.WaitFor(ctx, 200*time.Millisecond, func() error {
		cs, err := m.Istiod.RemoteClusters(ctx)
		if err != nil {
			return err
		}
		last = cs
		for _, c := range cs {
			if c.ID == id && c.SecretName != "" && c.SyncStatus == "synced" {
				return nil
			}
		}
		return fmt.Errorf("cluster %s not synced yet", id)
	})
	if err != nil {
		return fmt.Errorf("harness: istiod %s reading cluster %s: %w (clusterz: %+v)", m.ID, id, err, last)
	}
	return nil
}
