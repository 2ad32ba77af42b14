package config

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/ewgate/ewgate/gateway/config/field"
	"github.com/ewgate/ewgate/sni"
)

// Defaults of the xDS sections, documented in docs/config.md and docs/xds.md.
const (
	XDSServerBuiltin            = "builtin"
	DefaultControlPlaneAddress  = "127.0.0.1:15010"
	DefaultMeshPort             = 15443
	DefaultXDSInitialBackoff    = 500 * time.Millisecond
	DefaultXDSMaxBackoff        = 30 * time.Second
	DefaultDebounce             = 20 * time.Millisecond // quiet before a push (docs/config.md: why not istiod's 100ms)
	DefaultMaxPushDelay         = time.Second
	DefaultCertTTL              = 24 * time.Hour
	DefaultMaxCertTTL           = 7 * 24 * time.Hour
	DefaultTrustDomain          = "cluster.local"
	DefaultNodeNamespace        = "istio-system"
	DefaultNodeName             = "ewgate"    // when the host name is unknown
	DefaultNodeIP               = "127.0.0.1" // when the host has no other address
	DefaultClusterID            = "Kubernetes"
	MeshInternal                = "MESH_INTERNAL"
	MeshExternal                = "MESH_EXTERNAL"
	defaultServiceNamespaceName = "default"
)

// XDS is the gateway's xDS client: where the routes of routes_from: xds listeners come from.
type XDS struct {
	// Server is "builtin" (the default: the control plane of this process, see ControlPlane) or
	// the host:port of a control plane such as istiod (istiod.istio-system.svc:15012).
	Server string `yaml:"server"`
	// TLS to the server. Nil: plaintext, allowed only for the builtin server and loopback hosts.
	TLS *XDSTLS `yaml:"tls"`
	// TokenFile is a bearer token sent as "authorization: Bearer" on every stream, re-read when
	// the file changes (a projected service-account token). Needs TLS.
	TokenFile      string        `yaml:"token_file"`
	MeshPort       uint32        `yaml:"mesh_port"`       // zero: 15443; the listener of this port carries the mesh routes
	InitialBackoff time.Duration `yaml:"initial_backoff"` // zero: 500ms, doubled per failed attempt
	MaxBackoff     time.Duration `yaml:"max_backoff"`     // zero: 30s
	Node           XDSNode       `yaml:"node"`
}

// XDSTLS is how the xDS client checks the control plane.
type XDSTLS struct {
	CAFile     string `yaml:"ca_file"`     // PEM bundle of the control plane's CA; empty: the system roots
	ServerName string `yaml:"server_name"` // zero: the host of Server
}

// XDSNode is who the gateway says it is to the control plane: node id
// router~<ip>~<name>.<namespace>~<namespace>.svc.cluster.local and Istio's node metadata.
type XDSNode struct {
	IP        string `yaml:"ip"`         // zero: 127.0.0.1
	Name      string `yaml:"name"`       // the pod name; zero: ewgate
	Namespace string `yaml:"namespace"`  // zero: istio-system
	ClusterID string `yaml:"cluster_id"` // CLUSTER_ID; zero: Kubernetes (istiod's default)
	Network   string `yaml:"network"`    // NETWORK; the built-in control plane keeps the gateway's endpoints to it
	// RequestedNetworkView restricts the endpoints istiod sends to these networks; zero: [Network].
	RequestedNetworkView []string `yaml:"requested_network_view"`
	// Locality is the gateway's own region/zone/subzone, sent as the node's locality: istiod
	// (with a DestinationRule's localityLbSetting and outlierDetection) and the built-in control
	// plane give priority 0 to endpoints of this locality and lower priorities to farther ones.
	// Empty: no locality, every endpoint at priority 0.
	Locality string `yaml:"locality"`
	// Labels must match the Gateway resource's selector; zero: {istio: eastwestgateway}.
	Labels map[string]string `yaml:"labels"`
	// Metadata adds (or overrides) node metadata fields, e.g. ISTIO_VERSION or MESH_ID.
	Metadata map[string]string `yaml:"metadata"`
}

// ControlPlane is the built-in xDS server and CA (standalone mode).
type ControlPlane struct {
	// Address of its gRPC listener (ADS and the Istio CA); zero: 127.0.0.1:15010. Port 0 picks
	// a free port.
	Address string `yaml:"address"`
	// WorkloadEntriesDir is the registrar's file store whose WorkloadEntries become endpoints of
	// the services that select them. Empty: no WorkloadEntries, only static endpoints.
	WorkloadEntriesDir string        `yaml:"workload_entries_dir"`
	Debounce           time.Duration `yaml:"debounce"`       // zero: 20ms of quiet before a push
	MaxPushDelay       time.Duration `yaml:"max_push_delay"` // zero: 1s; a push is never held longer
	CA                 CA            `yaml:"ca"`
	DNS                DNS           `yaml:"dns"` // the name table VMs' DNS proxies get
}

// CA is the Istio certificate service of the built-in control plane.
type CA struct {
	// DataDir is where a CA key and root certificate are created on first start (ca-key.pem,
	// root-cert.pem) and loaded from afterwards. Empty with no CertFile: the CA service is off.
	DataDir     string        `yaml:"data_dir"`
	CertFile    string        `yaml:"cert_file"`    // a CA certificate (PEM) to sign with, instead of DataDir
	KeyFile     string        `yaml:"key_file"`     // its key (PEM, PKCS#8, EC or RSA)
	TTL         time.Duration `yaml:"ttl"`          // zero: 24h, when the CSR asks for none
	MaxTTL      time.Duration `yaml:"max_ttl"`      // zero: 7 days; longer requests are cut to it
	TrustDomain string        `yaml:"trust_domain"` // zero: cluster.local; for the root's name only
}

// Service is a mesh service in Istio ServiceEntry terms.
type Service struct {
	Name      string `yaml:"name"`      // required; logs and metrics
	Namespace string `yaml:"namespace"` // zero: default; a workload_selector selects entries of this namespace
	// Hosts are the service's DNS names (reviews.default.svc.cluster.local); each host and port
	// is one Istio cluster outbound_.<port>_._.<host>.
	Hosts []string `yaml:"hosts"`
	// Location is MESH_INTERNAL (the default here; Istio's default is MESH_EXTERNAL) or
	// MESH_EXTERNAL. Only MESH_INTERNAL services are routed on the mesh port.
	Location         string            `yaml:"location"`
	Ports            []ServicePort     `yaml:"ports"`
	WorkloadSelector *WorkloadSelector `yaml:"workload_selector"` // or endpoints, not both
	Endpoints        []ServiceEndpoint `yaml:"endpoints"`
	// Addresses are the IPs the service's hosts resolve to in VMs' DNS proxies (a ServiceEntry's
	// addresses); zero: a virtual IP per host from control_plane.dns.vip_range.
	Addresses []string `yaml:"addresses"`
}

// ServicePort is a port of a Service.
type ServicePort struct {
	Number     uint32 `yaml:"number"`
	Name       string `yaml:"name"`
	Protocol   string `yaml:"protocol"`    // HTTP, HTTP2, GRPC, TCP, TLS...; informational
	TargetPort uint32 `yaml:"target_port"` // zero: Number; an endpoint's ports[name] wins
}

// WorkloadSelector selects WorkloadEntries of the service's namespace carrying all these labels.
type WorkloadSelector struct {
	Labels map[string]string `yaml:"labels"`
}

// ServiceEndpoint is a static endpoint, in WorkloadEntry terms.
type ServiceEndpoint struct {
	Address        string            `yaml:"address"` // IP or DNS name, no port
	Ports          map[string]uint32 `yaml:"ports"`   // port name -> port
	Labels         map[string]string `yaml:"labels"`
	Network        string            `yaml:"network"`
	Locality       string            `yaml:"locality"` // region/zone/subzone
	Weight         uint32            `yaml:"weight"`   // zero: 1
	ServiceAccount string            `yaml:"service_account"`
}

// UsesXDS reports whether a listener takes its routes from xDS.
func (f *File) UsesXDS() bool {
	for _, l := range f.Listeners {
		if l.RoutesFromXDS() {
			return true
		}
	}
	return false
}

// ControlPlaneEnabled reports whether the built-in control plane runs: services or a CA are
// configured, an xds listener takes its routes from the builtin server, or the VM control
// endpoint forwards a cluster to it.
func (f *File) ControlPlaneEnabled() bool {
	return len(f.Services) > 0 || f.ControlPlane.CA.DataDir != "" || f.ControlPlane.CA.CertFile != "" ||
		(f.UsesXDS() && f.XDS.Server == XDSServerBuiltin) || f.BuiltinUpstream()
}

func (f *File) setXDSDefaults() {
	x := &f.XDS
	field.Default(&x.Server, XDSServerBuiltin)
	field.Default(&x.MeshPort, DefaultMeshPort)
	field.Default(&x.InitialBackoff, DefaultXDSInitialBackoff)
	field.Default(&x.MaxBackoff, DefaultXDSMaxBackoff)
	n := &x.Node
	field.Default(&n.IP, hostIP())
	field.Default(&n.Name, hostName())
	field.Default(&n.Namespace, DefaultNodeNamespace)
	field.Default(&n.ClusterID, DefaultClusterID)
	if len(n.RequestedNetworkView) == 0 && n.Network != "" {
		n.RequestedNetworkView = []string{n.Network}
	}
	if len(n.Labels) == 0 {
		n.Labels = map[string]string{"istio": "eastwestgateway"}
	}
	cp := &f.ControlPlane
	field.Default(&cp.Address, DefaultControlPlaneAddress)
	field.Default(&cp.Debounce, DefaultDebounce)
	field.Default(&cp.MaxPushDelay, DefaultMaxPushDelay)
	field.Default(&cp.CA.TTL, DefaultCertTTL)
	field.Default(&cp.CA.MaxTTL, DefaultMaxCertTTL)
	field.Default(&cp.CA.TrustDomain, DefaultTrustDomain)
	field.Default(&cp.DNS.VIPRange, DefaultVIPRange)
	for i := range f.Services {
		s := &f.Services[i]
		field.Default(&s.Namespace, defaultServiceNamespaceName)
		field.Default(&s.Location, MeshInternal)
		for j := range s.Ports {
			field.Default(&s.Ports[j].TargetPort, s.Ports[j].Number)
		}
		for j := range s.Endpoints {
			field.Default(&s.Endpoints[j].Weight, 1)
		}
	}
}

func (f *File) validateXDS(v *validator) {
	x := &f.XDS
	if x.Server != XDSServerBuiltin {
		host, _, err := net.SplitHostPort(x.Server)
		switch {
		case err != nil || host == "":
			v.add("xds.server", "%q: want builtin or the control plane's host:port (istiod.istio-system.svc:15012)", x.Server)
		case x.TLS == nil && !isLoopbackHost(host):
			v.add("xds.tls", "required for a control plane off this host (%s): give ca_file and server_name", host)
		}
	}
	if x.TokenFile != "" && x.TLS == nil {
		v.add("xds.token_file", "a bearer token is only ever sent over TLS: configure xds.tls")
	}
	if x.MaxBackoff < x.InitialBackoff || x.InitialBackoff < 0 {
		v.add("xds", "want 0 < initial_backoff <= max_backoff")
	}
	if net.ParseIP(x.Node.IP) == nil {
		v.add("xds.node.ip", "%q is not an IP address", x.Node.IP)
	}
	if l := x.Node.Locality; strings.Count(l, "/") > 2 || strings.HasPrefix(l, "/") {
		v.add("xds.node.locality", "%q: want region/zone/subzone (zone and subzone optional)", l)
	}
	for k, val := range x.Node.Metadata {
		if k == "" || val == "" {
			v.add("xds.node.metadata", "keys and values must not be empty")
		}
	}
	cp := &f.ControlPlane
	v.hostPort("control_plane.address", cp.Address)
	if cp.Debounce < 0 || cp.MaxPushDelay < cp.Debounce {
		v.add("control_plane", "want 0 < debounce <= max_push_delay")
	}
	ca := &cp.CA
	if (ca.CertFile == "") != (ca.KeyFile == "") {
		v.add("control_plane.ca", "cert_file and key_file go together")
	}
	if ca.CertFile != "" && ca.DataDir != "" {
		v.add("control_plane.ca.data_dir", "either data_dir (a generated CA) or cert_file/key_file, not both")
	}
	if ca.TTL < 0 || ca.MaxTTL < ca.TTL {
		v.add("control_plane.ca", "want 0 < ttl <= max_ttl")
	}
	f.validateServices(v)
	f.validateDNS(v)
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (f *File) validateServices(v *validator) {
	names := map[string]bool{}
	hosts := map[string]string{}
	for i := range f.Services {
		s := &f.Services[i]
		p := fmt.Sprintf("services[%d]", i)
		key := s.Namespace + "/" + s.Name
		switch {
		case s.Name == "":
			v.add(p+".name", "required")
		case names[key]:
			v.add(p+".name", "%q is used by another service of namespace %s", s.Name, s.Namespace)
		}
		names[key] = true
		if s.Location != MeshInternal && s.Location != MeshExternal {
			v.add(p+".location", "%q: want MESH_INTERNAL or MESH_EXTERNAL", s.Location)
		}
		if len(s.Hosts) == 0 {
			v.add(p+".hosts", "required: the service's DNS names (reviews.default.svc.cluster.local)")
		}
		for j, h := range s.Hosts {
			hp := fmt.Sprintf("%s.hosts[%d]", p, j)
			h = strings.ToLower(h)
			if _, err := sni.ParseIstioName(sni.OutboundName(1, "", h)); err != nil || strings.Contains(h, "*") {
				v.add(hp, "%q is not a DNS name (wildcards are not served)", s.Hosts[j])
			} else if other, dup := hosts[h]; dup {
				v.add(hp, "%q is also a host of service %s", s.Hosts[j], other)
			}
			hosts[h] = key
		}
		if len(s.Ports) == 0 {
			v.add(p+".ports", "required: at least one {number, name, protocol}")
		}
		portNames := map[string]bool{}
		portNums := map[uint32]bool{}
		for j, pt := range s.Ports {
			pp := fmt.Sprintf("%s.ports[%d]", p, j)
			if pt.Number == 0 || pt.Number > 65535 || pt.TargetPort > 65535 {
				v.add(pp+".number", "want a port from 1 to 65535")
			}
			if pt.Name == "" || portNames[pt.Name] {
				v.add(pp+".name", "required and unique within the service (endpoints' ports refer to it)")
			}
			if portNums[pt.Number] {
				v.add(pp+".number", "%d is listed twice", pt.Number)
			}
			portNames[pt.Name], portNums[pt.Number] = true, true
		}
		if s.WorkloadSelector != nil && len(s.Endpoints) > 0 {
			v.add(p+".endpoints", "a service has either a workload_selector or endpoints, as a ServiceEntry does")
		}
		if s.WorkloadSelector != nil && len(s.WorkloadSelector.Labels) == 0 {
			v.add(p+".workload_selector.labels", "required: a selector without labels would select every workload")
		}
		for j, e := range s.Endpoints {
			ep := fmt.Sprintf("%s.endpoints[%d]", p, j)
			if e.Address == "" || strings.Contains(e.Address, "/") {
				v.add(ep+".address", "required: an IP or DNS name without port (ports go in ports:)")
			} else if _, _, err := net.SplitHostPort(e.Address); err == nil {
				v.add(ep+".address", "%q: give the port in ports: {<port name>: <port>}", e.Address)
			}
			for name, port := range e.Ports {
				if !portNames[name] || port == 0 || port > 65535 {
					v.add(ep+".ports", "%q: want a port name of this service and a port from 1 to 65535", name)
				}
			}
			if e.Locality != "" && strings.Count(e.Locality, "/") > 2 {
				v.add(ep+".locality", "%q: want region/zone/subzone", e.Locality)
			}
		}
	}
}

// hostName is the default gateway node name: the host name, which in Kubernetes is the pod's
// name, so that replicas sharing one ConfigMap still connect to istiod as distinct proxies.
func hostName() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return strings.ToLower(h)
	}
	return DefaultNodeName
}

// hostIP is the default gateway node IP: the host's first non-loopback unicast address (the pod
// IP in Kubernetes), else 127.0.0.1.
func hostIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return DefaultNodeIP
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() && !ipn.IP.IsLoopback() {
			return ipn.IP.String()
		}
	}
	return DefaultNodeIP
}
