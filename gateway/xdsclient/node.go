package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ewgate/ewgate/gateway/config"
)

// NewNode is the node a gateway presents to istiod: id router~<ip>~<name>.<ns>~<ns>.svc.cluster.local
// and the metadata istiod reads to treat it as the east-west gateway of its network.
func NewNode(n config.XDSNode, version string) *corev3.Node {
	labels := map[string]any{}
	for k, v := range n.Labels {
		labels[k] = v
	}
	md := map[string]any{
		"NAMESPACE":     n.Namespace,
		"CLUSTER_ID":    n.ClusterID,
		"NAME":          n.Name,
		"WORKLOAD_NAME": n.Name,
		"LABELS":        labels,
		"INSTANCE_IPS":  n.IP,
		// A router, not a sidecar: istiod then sends the Gateway's listeners.
		"INTERCEPTION_MODE": "NONE",
	}
	if n.Network != "" {
		md["NETWORK"] = n.Network
	}
	if len(n.RequestedNetworkView) > 0 {
		md["REQUESTED_NETWORK_VIEW"] = strings.Join(n.RequestedNetworkView, ",")
	}
	for k, v := range n.Metadata {
		md[k] = v
	}
	st, err := structpb.NewStruct(md)
	if err != nil {
		panic(err) // strings and string maps only
	}
	return &corev3.Node{
		Id:                   fmt.Sprintf("router~%s~%s.%s~%s.svc.cluster.local", n.IP, n.Name, n.Namespace, n.Namespace),
		Cluster:              n.Name,
		Metadata:             st,
		Locality:             Locality(n.Locality),
		UserAgentName:        "ewgate",
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: version},
	}
}

// Locality turns region/zone/subzone into an xDS locality; nil for "".
func Locality(s string) *corev3.Locality {
	if s == "" {
		return nil
	}
	parts := strings.SplitN(s, "/", 3)
	l := &corev3.Locality{Region: parts[0]}
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.SubZone = parts[2]
	}
	return l
}

// tokenFile sends "authorization: Bearer <token>" read from a file, re-read whenever its
// modification time or size changes (a projected service-account token is rotated in place).
type tokenFile struct {
	path string
	mu   sync.Mutex
	mod  time.Time
	size int64
	tok  string
}

func (t *tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	st, err := os.Stat(t.path)
	if err != nil {
		return nil, fmt.Errorf("xdsclient: token file: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !st.ModTime().Equal(t.mod) || st.Size() != t.size || t.tok == "" {
		raw, err := os.ReadFile(t.path)
		if err != nil {
			return nil, fmt.Errorf("xdsclient: token file: %w", err)
		}
		tok := strings.TrimSpace(string(raw))
		if tok == "" {
			return nil, errors.New("xdsclient: token file is empty")
		}
		t.tok, t.mod, t.size = tok, st.ModTime(), st.Size()
	}
	return map[string]string{"authorization": "Bearer " + t.tok}, nil
}

// RequireTransportSecurity: a bearer token never goes over plaintext.
func (t *tokenFile) RequireTransportSecurity() bool { return true }
