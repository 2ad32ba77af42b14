package config

import (
	"fmt"
	"net/netip"
)

// DefaultVIPRange is where the built-in control plane allocates a virtual IP for each service
// host without addresses: Istio's own range for auto-allocated ServiceEntry addresses (class E,
// never routed).
const DefaultVIPRange = "240.240.0.0/16"

// DNS is the name table the built-in control plane serves to VMs whose pilot-agent runs its DNS
// proxy (ISTIO_META_DNS_CAPTURE=true).
type DNS struct {
	// VIPRange is an IPv4 CIDR from which hosts of services without addresses get a virtual IP,
	// derived from the host name (the same config always gives the same IPs); zero: 240.240.0.0/16.
	VIPRange string `yaml:"vip_range"`
}

// ParseVIPRange parses a vip_range: an IPv4 CIDR with at least two addresses.
func ParseVIPRange(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q: want an IPv4 CIDR", s)
	}
	if p.Bits() > 31 {
		return netip.Prefix{}, fmt.Errorf("%q: want a range of at least two addresses (/31 or wider)", s)
	}
	return p.Masked(), nil
}

func (f *File) validateDNS(v *validator) {
	if _, err := ParseVIPRange(f.ControlPlane.DNS.VIPRange); err != nil {
		v.add("control_plane.dns.vip_range", "%v", err)
	}
	for i := range f.Services {
		for j, a := range f.Services[i].Addresses {
			if _, err := netip.ParseAddr(a); err != nil {
				v.add(fmt.Sprintf("services[%d].addresses[%d]", i, j), "%q is not an IP address", a)
			}
		}
	}
}
