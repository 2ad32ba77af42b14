package statuspage

import (
	"bytes"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/xdsclient"
	"github.com/ewgate/ewgate/registrar"
)

// MaxRows caps each table of the page; the rows left out are counted on a line of their own.
// The JSON pages are not capped.
const MaxRows = 200

// rows is one table's shown rows and how many were left out.
type rows[T any] struct {
	Rows []T
	More int
}

func capRows[T any](all []T) rows[T] {
	if len(all) <= MaxRows {
		return rows[T]{Rows: all}
	}
	return rows[T]{Rows: all[:MaxRows], More: len(all) - MaxRows}
}

// view is what render writes.
type view struct {
	S         Status
	Uptime    string
	Listeners rows[dataplane.ListenerStatus]
	Clusters  rows[dataplane.ClusterStatus]
	Ejected   rows[dataplane.EjectedStatus]
	Refusals  rows[dataplane.Refusal]
	Issuers   rows[authn.IssuerStatus]
	VMs       rows[registrar.Registration]
	VMStates  []stateCount
	XDSTypes  []xdsclient.TypeStatus
}

type stateCount struct {
	State string
	Count int
}

func newView(s Status) view {
	v := view{S: s, Uptime: time.Duration(s.UptimeSeconds * float64(time.Second)).String(),
		Listeners: capRows(s.Listeners), Clusters: capRows(s.Clusters), Ejected: capRows(s.Ejected), Refusals: capRows(s.Refusals),
		Issuers: capRows(s.Issuers), VMs: capRows(s.vmList)}
	if s.XDS != nil {
		v.XDSTypes = s.XDS.Types
	}
	if s.VMs != nil {
		for st, n := range s.VMs.ByState {
			v.VMStates = append(v.VMStates, stateCount{st, n})
		}
		sort.Slice(v.VMStates, func(i, j int) bool { return v.VMStates[i].State < v.VMStates[j].State })
	}
	return v
}

// Handler serves GET / (the HTML page) from gather; pass it the debug admin's mux as "GET /{$}".
func Handler(gather func() Status) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		var b bytes.Buffer
		render(&b, newView(gather()))
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		// Nothing on the page runs or loads anything: a name a client chose that slipped past
		// escaping still could not run a script.
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
		h.Set("X-Content-Type-Options", "nosniff")
		w.Write(b.Bytes())
	})
}

// JSONHandler serves GET /debug/status from gather.
func JSONHandler(gather func() Status) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(gather())
	})
}
