package dataplane

import (
	"errors"
	"net/netip"
	"strings"

	"github.com/ewgate/ewgate/sni"
)

// ErrNotExported refuses a mesh name whose host the listener's export allow-list does not give
// to this client, whatever the route source publishes.
var ErrNotExported = errors.New("dataplane: host not exported on this listener to this client (listeners[].export)")

// ExportRule is one entry of a mesh listener's export allow-list (listeners[].export): the
// hosts it exports, and to which clients. A host is exported when some rule names it (by its
// namespace or a host pattern) and that rule's from_cidrs, if any, hold the client's address.
type ExportRule struct {
	// Namespaces export every host <svc>.<ns>.svc.<domain> of these namespaces: Istio's name
	// for a Kubernetes Service (the namespace is read from the name, as Istio names it; a
	// ServiceEntry's hosts are named with Hosts).
	Namespaces []string `yaml:"namespaces" json:"namespaces,omitempty"`
	// Hosts are exact names or wildcards (*.shop.svc.cluster.local: one or more labels before
	// the suffix), case-insensitive.
	Hosts []string `yaml:"hosts" json:"hosts,omitempty"`
	// FromCIDRs limit the rule to clients in these ranges: the PROXY header's source when a
	// trusted load balancer sent one, else the TCP peer. None: every client.
	FromCIDRs []string `yaml:"from_cidrs" json:"from_cidrs,omitempty"`
}

// exportList is a listener's compiled allow-list; a nil *exportList exports everything.
type exportList struct{ rules []exportRule }

type exportRule struct {
	namespaces map[string]bool
	hosts      []string
	from       []netip.Prefix
}

// newExportList compiles validated rules; nil rules (no export key): nil, everything exported.
func newExportList(rules []ExportRule) *exportList {
	if rules == nil {
		return nil
	}
	l := &exportList{}
	for _, r := range rules {
		cr := exportRule{namespaces: map[string]bool{}}
		for _, ns := range r.Namespaces {
			cr.namespaces[strings.ToLower(ns)] = true
		}
		for _, h := range r.Hosts {
			cr.hosts = append(cr.hosts, strings.ToLower(strings.TrimSuffix(h, ".")))
		}
		for _, c := range r.FromCIDRs {
			cr.from = append(cr.from, netip.MustParsePrefix(c).Masked()) // validated at load
		}
		l.rules = append(l.rules, cr)
	}
	return l
}

// allows reports whether host (lower-case, no trailing dot) is exported to client.
func (l *exportList) allows(host string, client netip.Addr) bool {
	if l == nil {
		return true
	}
	client = client.Unmap()
	ns := namespaceOf(host)
	for i := range l.rules {
		r := &l.rules[i]
		if r.names(host, ns) && r.admits(client) {
			return true
		}
	}
	return false
}

func (r *exportRule) names(host, ns string) bool {
	if ns != "" && r.namespaces[ns] {
		return true
	}
	for _, p := range r.hosts {
		if sni.MatchHost(p, host) {
			return true
		}
	}
	return false
}

func (r *exportRule) admits(client netip.Addr) bool {
	if len(r.from) == 0 {
		return true
	}
	for _, p := range r.from {
		if p.Contains(client) {
			return true
		}
	}
	return false
}

// namespaceOf returns <ns> of a host <svc>.<ns>.svc.<domain>, or "".
func namespaceOf(host string) string {
	svc, rest, ok := strings.Cut(host, ".")
	if !ok || svc == "" {
		return ""
	}
	ns, rest, ok := strings.Cut(rest, ".")
	if !ok || ns == "" {
		return ""
	}
	if kind, domain, ok := strings.Cut(rest, "."); !ok || kind != "svc" || domain == "" {
		return ""
	}
	return ns
}
