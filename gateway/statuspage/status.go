// Package statuspage is the status of a running ewgate, as JSON (GET /debug/status, which
// `ewgate status` reads) and as one server-rendered HTML page (GET / of the debug admin), in
// the spirit of HAProxy's stats page: listeners, clusters and their endpoints' health, open
// connections, refusals by reason, the xDS stream, the token issuers and the VMs registered.
//
// It only assembles and renders: every number comes from the component that owns it (the
// data plane's Status, computed from the view behind GET /debug/routes; the xDS client's
// Status; authn's issuer status, as GET /debug/authn; the registrars' registrations, as GET
// /debug/registrations). The page needs no JavaScript; everything on it is escaped by
// html.EscapeString (server names, node ids and VM addresses are chosen by clients), and each table
// shows at most MaxRows rows, then says how many more there are.
package statuspage

import (
	"time"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/xdsclient"
	"github.com/ewgate/ewgate/registrar"
)

// Status is a running ewgate's state, as GET /debug/status serves it.
type Status struct {
	Version       string    `json:"version"`
	GoVersion     string    `json:"go_version"`
	Started       time.Time `json:"started"`
	Now           time.Time `json:"now"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	dataplane.Status
	// Control is the VM control endpoint's state, as GET /healthz/control says it: ready, not
	// ready (starting or draining) or degraded; empty without a control endpoint.
	Control string               `json:"control,omitempty"`
	XDS     *xdsclient.Status    `json:"xds,omitempty"`     // nil without routes_from: xds listeners
	Issuers []authn.IssuerStatus `json:"issuers,omitempty"` // as GET /debug/authn
	VMs     *VMSummary           `json:"vms,omitempty"`     // nil without a registrar
	vmList  []registrar.Registration
}

// VMSummary counts the registrations by state; GET /debug/registrations lists them.
type VMSummary struct {
	Total   int            `json:"total"`
	ByState map[string]int `json:"by_state"`
}

// Sources are where a Status comes from; the nil ones are components not configured.
type Sources struct {
	Version   string
	Started   time.Time
	Now       func() time.Time // nil: time.Now
	DataPlane func() dataplane.Status
	Control   func() string                   // nil: no control endpoint
	XDS       func() xdsclient.Status         // nil: no xDS client
	Issuers   func() []authn.IssuerStatus     // nil: no authn
	VMs       func() []registrar.Registration // nil: no registrar
	GoVersion string
}

// Gather reads every source once.
func (s Sources) Gather() Status {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	t := now()
	st := Status{Version: s.Version, GoVersion: s.GoVersion, Started: s.Started, Now: t,
		UptimeSeconds: t.Sub(s.Started).Truncate(time.Second).Seconds(), Status: s.DataPlane()}
	if s.Control != nil {
		st.Control = s.Control()
	}
	if s.XDS != nil {
		x := s.XDS()
		st.XDS = &x
	}
	if s.Issuers != nil {
		st.Issuers = s.Issuers()
	}
	if s.VMs != nil {
		st.vmList = s.VMs()
		st.VMs = &VMSummary{Total: len(st.vmList), ByState: map[string]int{}}
		for _, r := range st.vmList {
			st.VMs.ByState[r.State]++
		}
	}
	return st
}
