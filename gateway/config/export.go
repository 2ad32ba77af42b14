package config

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ewgate/ewgate/sni"
)

// validateExport checks listener l's export allow-list; p is the listener's path.
func validateExport(v *validator, p string, l *Listener) {
	if l.Export == nil {
		return
	}
	p += ".export"
	if l.Kind != KindMesh {
		v.add(p, "only mesh listeners export hosts (an ingress listener serves its routes: list)")
		return
	}
	if len(l.Export) == 0 {
		v.add(p, "an empty list would export nothing: leave export out to serve every host the route source publishes, or list rules")
		return
	}
	for i, r := range l.Export {
		rp := fmt.Sprintf("%s[%d]", p, i)
		if len(r.Namespaces) == 0 && len(r.Hosts) == 0 {
			v.add(rp, "a rule names what it exports: namespaces, hosts or both")
		}
		for j, ns := range r.Namespaces {
			if sni.ValidHostPattern(ns) != nil || strings.ContainsAny(ns, ".*") {
				v.add(fmt.Sprintf("%s.namespaces[%d]", rp, j), "%q is not a namespace name (a DNS label such as shop)", ns)
			}
		}
		for j, h := range r.Hosts {
			if err := sni.ValidHostPattern(h); err != nil {
				v.add(fmt.Sprintf("%s.hosts[%d]", rp, j), "%q is not a host name: want an exact name (db.example.internal) or a wildcard (*.shop.svc.cluster.local)", h)
			}
		}
		for j, c := range r.FromCIDRs {
			if _, err := netip.ParsePrefix(c); err != nil {
				v.add(fmt.Sprintf("%s.from_cidrs[%d]", rp, j), "%q is not a CIDR such as 10.8.0.0/16", c)
			}
		}
	}
}
