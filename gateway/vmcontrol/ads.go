package vmcontrol

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ewgate/ewgate/registrar"
)

// Methods the front knows; every other method is forwarded untouched.
const (
	MethodADS      = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	MethodDeltaADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
	MethodCA       = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

	// HealthInfoType is the type URL of pilot-agent's health reports on the ADS stream.
	HealthInfoType = "type.googleapis.com/istio.v1.HealthInformation"

	metaAutoRegister = "AUTO_REGISTER_GROUP"
)

// methodLabel keeps the metric's cardinality bounded whatever method a client names.
func methodLabel(m string) string {
	switch m {
	case MethodADS:
		return "ads"
	case MethodDeltaADS:
		return "delta_ads"
	case MethodCA:
		return "ca"
	}
	return "other"
}

// firstRequest is what the front needs of an ADS stream's first request.
type firstRequest struct {
	node  *corev3.Node
	group string
	msg   proto.Message // decoded, for the re-encoding without AUTO_REGISTER_GROUP
}

// decodeFirst decodes the first request of an ADS or Delta ADS stream (the only message the
// front decodes in full).
func decodeFirst(method string, b []byte) (*firstRequest, error) {
	var msg interface {
		proto.Message
		GetNode() *corev3.Node
	}
	if method == MethodDeltaADS {
		msg = &discoveryv3.DeltaDiscoveryRequest{}
	} else {
		msg = &discoveryv3.DiscoveryRequest{}
	}
	if err := proto.Unmarshal(b, msg); err != nil {
		return nil, fmt.Errorf("vmcontrol: first discovery request: %w", err)
	}
	fr := &firstRequest{node: msg.GetNode(), msg: msg}
	if fr.node == nil {
		return nil, fmt.Errorf("vmcontrol: the first discovery request carries no node")
	}
	fr.group = metaString(fr.node.GetMetadata(), metaAutoRegister)
	return fr, nil
}

// withoutAutoRegister re-encodes the first request without AUTO_REGISTER_GROUP, so the upstream
// (istiod) does not register the VM a second time: ewgate is the registration authority.
func (fr *firstRequest) withoutAutoRegister() ([]byte, error) {
	delete(fr.node.GetMetadata().GetFields(), metaAutoRegister)
	return proto.MarshalOptions{}.Marshal(fr.msg)
}

func metaString(s *structpb.Struct, key string) string {
	return s.GetFields()[key].GetStringValue()
}

// registrarNode converts pilot-agent's node (ISTIO_META_* metadata) for the registrar.
func registrarNode(n *corev3.Node) registrar.Node {
	md := n.GetMetadata()
	rn := registrar.Node{
		ID:                n.GetId(),
		AutoRegisterGroup: metaString(md, metaAutoRegister),
		Network:           metaString(md, "NETWORK"),
		ClusterID:         metaString(md, "CLUSTER_ID"),
		WorkloadName:      metaString(md, "WORKLOAD_NAME"),
		Locality: registrar.Locality{Region: n.GetLocality().GetRegion(), Zone: n.GetLocality().GetZone(),
			SubZone: n.GetLocality().GetSubZone()},
	}
	for _, ip := range strings.Split(metaString(md, "INSTANCE_IPS"), ",") {
		if ip = strings.TrimSpace(ip); ip != "" {
			rn.InstanceIPs = append(rn.InstanceIPs, ip)
		}
	}
	if labels := md.GetFields()["LABELS"].GetStructValue(); labels != nil {
		rn.Labels = map[string]string{}
		for k, v := range labels.GetFields() {
			rn.Labels[k] = v.GetStringValue()
		}
	}
	if pc := md.GetFields()["PROXY_CONFIG"].GetStructValue(); pc != nil {
		_, rn.HasReadinessProbe = pc.GetFields()["readinessProbe"]
	}
	return rn
}

// healthReport scans a request without decoding it: only its type URL and, for a health
// report, its error detail are read.
func healthReport(method string, b []byte) (isHealth, healthy bool, message string) {
	typeField, errField := protowire.Number(4), protowire.Number(6) // DiscoveryRequest
	if method == MethodDeltaADS {
		typeField, errField = 2, 7 // DeltaDiscoveryRequest
	}
	var errDetail []byte
	hasErr := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false, false, ""
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == typeField || num == errField) {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return false, false, ""
			}
			if num == typeField {
				if string(v) != HealthInfoType {
					return false, false, ""
				}
				isHealth = true
			} else {
				errDetail, hasErr = v, true
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false, false, ""
		}
		b = b[m:]
	}
	if !isHealth {
		return false, false, ""
	}
	if !hasErr {
		return true, true, "" // istiod: no error detail means healthy
	}
	st := &statuspb.Status{}
	if err := proto.Unmarshal(errDetail, st); err == nil {
		message = st.GetMessage()
	}
	return true, false, message
}
