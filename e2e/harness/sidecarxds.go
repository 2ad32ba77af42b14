package harness

import (
	"context"
	"fmt"
	"net"
	"sync"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// xDS type URLs a sidecar observer asks for.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// SidecarNode is the node an Envoy sidecar (through pilot-agent) presents to istiod: id
// sidecar~<ip>~<name>.<ns>~<ns>.svc.cluster.local, metadata NAMESPACE, NETWORK, CLUSTER_ID,
// ISTIO_VERSION and no GENERATOR (so istiod answers in Envoy form, with its network rewriting).
func SidecarNode(ip, name, ns, network, clusterID string) (*corev3.Node, error) {
	meta, err := structpb.NewStruct(map[string]any{
		"NAMESPACE":     ns,
		"NETWORK":       network,
		"CLUSTER_ID":    clusterID,
		"ISTIO_VERSION": "1.31.0",
		"INSTANCE_IPS":  ip,
		"NAME":          name,
	})
	if err != nil {
		return nil, err
	}
	return &corev3.Node{
		Id:       fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", ip, name, ns, ns),
		Cluster:  name + "." + ns,
		Metadata: meta,
	}, nil
}

// SidecarXDS is one ADS stream (state of the world) to an istiod, as Envoy holds it: every
// response is ACKed, each Watch asks for one type.
type SidecarXDS struct {
	conn   *grpc.ClientConn
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node   *corev3.Node
	cancel context.CancelFunc
	resps  chan *discoveryv3.DiscoveryResponse
	wg     sync.WaitGroup
	recvMu sync.Mutex
	err    error

	// per type URL: the names asked for, the last version and nonce
	names    map[string][]string
	versions map[string]string
	nonces   map[string]string
}

// DialSidecarXDS opens an ADS stream to c (TLS verified to c.Roots, c.Token as the bearer).
func DialSidecarXDS(ctx context.Context, c IstiodConn, node *corev3.Node) (*SidecarXDS, error) {
	conn, err := c.grpcConn()
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(c.outgoing(context.Background()))
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("harness: ADS to %s: %w", c.Addr, err)
	}
	s := &SidecarXDS{
		conn: conn, stream: stream, node: node, cancel: cancel,
		resps: make(chan *discoveryv3.DiscoveryResponse, 16),
		names: map[string][]string{}, versions: map[string]string{}, nonces: map[string]string{},
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(s.resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				s.recvMu.Lock()
				s.err = err
				s.recvMu.Unlock()
				return
			}
			select {
			case s.resps <- r:
			case <-sctx.Done():
				return
			}
		}
	}()
	return s, nil
}

// Close ends the stream and waits for its receiver.
func (s *SidecarXDS) Close() {
	s.cancel()
	s.conn.Close()
	s.wg.Wait()
}

func (s *SidecarXDS) send(typeURL string) error {
	return s.stream.Send(&discoveryv3.DiscoveryRequest{
		Node: s.node, TypeUrl: typeURL, ResourceNames: s.names[typeURL],
		VersionInfo: s.versions[typeURL], ResponseNonce: s.nonces[typeURL],
	})
}

// Watch subscribes to typeURL (names empty: all) and reads responses, ACKing each, until one of
// that type satisfies cond (nil error) or ctx ends; it returns that response's resources.
func (s *SidecarXDS) Watch(ctx context.Context, typeURL string, names []string, cond func([]*anypb.Any) error) ([]*anypb.Any, error) {
	s.names[typeURL] = names
	if err := s.send(typeURL); err != nil {
		return nil, fmt.Errorf("harness: ADS request %s: %w", typeURL, err)
	}
	last := fmt.Errorf("no %s response yet", typeURL)
	for n := 0; n < maxWatchResponses; n++ {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("harness: ADS %s: %w (last: %v)", typeURL, ctx.Err(), last)
		case r, ok := <-s.resps:
			if !ok {
				s.recvMu.Lock()
				err := s.err
				s.recvMu.Unlock()
				return nil, fmt.Errorf("harness: ADS stream ended: %w", err)
			}
			s.versions[r.TypeUrl], s.nonces[r.TypeUrl] = r.VersionInfo, r.Nonce
			if err := s.send(r.TypeUrl); err != nil { // ACK
				return nil, fmt.Errorf("harness: ADS ack %s: %w", r.TypeUrl, err)
			}
			if r.TypeUrl != typeURL {
				continue
			}
			if last = cond(r.Resources); last == nil {
				return r.Resources, nil
			}
		}
	}
	return nil, fmt.Errorf("harness: ADS %s: %d responses and none satisfied the condition (last: %v)", typeURL, maxWatchResponses, last)
}

// maxWatchResponses bounds one Watch (istiod pushes a few responses per config change).
const maxWatchResponses = 1000

// Clusters decodes CDS resources.
func Clusters(rs []*anypb.Any) ([]*clusterv3.Cluster, error) {
	out := make([]*clusterv3.Cluster, 0, len(rs))
	for _, r := range rs {
		c := &clusterv3.Cluster{}
		if err := r.UnmarshalTo(c); err != nil {
			return nil, fmt.Errorf("harness: cluster: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// LoadAssignments decodes EDS resources.
func LoadAssignments(rs []*anypb.Any) ([]*endpointv3.ClusterLoadAssignment, error) {
	out := make([]*endpointv3.ClusterLoadAssignment, 0, len(rs))
	for _, r := range rs {
		c := &endpointv3.ClusterLoadAssignment{}
		if err := r.UnmarshalTo(c); err != nil {
			return nil, fmt.Errorf("harness: load assignment: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

// EndpointAddrs lists host:port of every endpoint of a load assignment.
func EndpointAddrs(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				continue
			}
			out = append(out, net.JoinHostPort(sa.GetAddress(), fmt.Sprint(sa.GetPortValue())))
		}
	}
	return out
}

// MTLSSettings is what a cluster's Istio mTLS transport socket tells a client to send and check.
type MTLSSettings struct {
	SNI  string
	ALPN []string
	SANs []string // exact match_subject_alt_names of the validation context
}

// ClusterMTLS reads the mTLS transport socket of an Istio outbound cluster: the cluster's own
// transport_socket, or the `tlsMode: istio` entry of its transport_socket_matches (auto mTLS).
func ClusterMTLS(c *clusterv3.Cluster) (*MTLSSettings, error) {
	var sockets []*corev3.TransportSocket
	if c.GetTransportSocket() != nil {
		sockets = append(sockets, c.GetTransportSocket())
	}
	for _, m := range c.GetTransportSocketMatches() {
		if m.GetMatch().GetFields()["tlsMode"].GetStringValue() == "istio" {
			sockets = append(sockets, m.GetTransportSocket())
		}
	}
	for _, ts := range sockets {
		tc := ts.GetTypedConfig()
		if tc == nil || tc.GetTypeUrl() != "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" {
			continue
		}
		up := &tlsv3.UpstreamTlsContext{}
		if err := tc.UnmarshalTo(up); err != nil {
			return nil, fmt.Errorf("harness: cluster %s: %w", c.GetName(), err)
		}
		s := &MTLSSettings{SNI: up.GetSni(), ALPN: up.GetCommonTlsContext().GetAlpnProtocols()}
		vc := up.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext()
		for _, m := range vc.GetMatchSubjectAltNames() {
			if e := m.GetExact(); e != "" {
				s.SANs = append(s.SANs, e)
			}
		}
		for _, m := range vc.GetMatchTypedSubjectAltNames() {
			if e := m.GetMatcher().GetExact(); e != "" {
				s.SANs = append(s.SANs, e)
			}
		}
		return s, nil
	}
	return nil, fmt.Errorf("harness: cluster %s has no Istio mTLS transport socket", c.GetName())
}
