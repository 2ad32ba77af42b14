package statuspage

import (
	"bytes"
	"fmt"
	"html"
	"time"
)

// The page is written by hand rather than by html/template: executing any text/template keeps
// the Go linker from dropping unused methods anywhere in the binary (it calls methods by name
// through reflection), which kept megabytes of generated protobuf validation code resident in
// every gateway. Every value a client or a config chose goes through esc (html.EscapeString:
// & < > " ' become entities); the page has no script and loads nothing; every value sits in
// text context, and the only attributes written from data are fixed class names.

// pageWriter writes the page: raw markup with w, escaped text with esc, numbers with num.
type pageWriter struct{ b *bytes.Buffer }

func (p pageWriter) w(s ...string) {
	for _, x := range s {
		p.b.WriteString(x)
	}
}

func (p pageWriter) esc(s string) { p.b.WriteString(html.EscapeString(s)) }

func (p pageWriter) num(v any) { fmt.Fprint(p.b, v) }

// td writes <td class="cls">escaped</td> (no class attribute when cls is empty).
func (p pageWriter) td(cls, s string) {
	if cls == "" {
		p.w("<td>")
	} else {
		p.w(`<td class="`, cls, `">`)
	}
	p.esc(s)
	p.w("</td>")
}

// tdn writes a number cell.
func (p pageWriter) tdn(cls string, v any) {
	p.w(`<td class="`, cls, `">`)
	p.num(v)
	p.w("</td>")
}

func (p pageWriter) more(n int, what string) {
	if n != 0 {
		p.w(`<div class="more">`)
		p.num(n)
		p.w(" more")
		if what != "" {
			p.w(" ", what)
		}
		p.w("</div>\n")
	}
}

func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func tsp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return ts(*t)
}

func okBad(ok bool) string {
	if ok {
		return "ok"
	}
	return "bad"
}

func render(b *bytes.Buffer, v view) {
	p := pageWriter{b}
	s := v.S
	p.w("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>ewgate ")
	p.esc(s.Version)
	p.w(" status</title>\n", pageStyle, "</head><body>\n<h1>ewgate <span id=\"version\">")
	p.esc(s.Version)
	p.w("</span></h1>\n<div class=\"meta\">\n<span id=\"ready\">")
	if s.Ready {
		p.w(`<b class="ok">ready</b>`)
	} else {
		p.w(`<b class="bad">not ready</b>`)
	}
	p.w("</span>\n<span>uptime <b id=\"uptime\">")
	p.esc(v.Uptime)
	p.w("</b></span>\n<span>started ", ts(s.Started), "</span>\n<span>route snapshot v")
	p.num(s.SnapshotVersion)
	p.w(" built ", ts(s.SnapshotBuilt), "</span>\n<span>")
	p.esc(s.GoVersion)
	p.w("</span>\n")
	if s.Control != "" {
		p.w(`<span>control endpoint <b id="control" class="`, okBad(s.Control == "ready"), `">`)
		p.esc(s.Control)
		p.w("</b></span>")
	}
	p.w("\n</div>\n\n")
	renderListeners(p, v)
	renderRefusals(p, v)
	renderXDS(p, v)
	renderIssuers(p, v)
	renderVMs(p, v)
	p.w("<h2>More</h2>\n<p class=\"meta\">JSON: <a href=\"/debug/status\">/debug/status</a> <a href=\"/debug/routes\">/debug/routes</a>")
	if s.VMs != nil {
		p.w(` <a href="/debug/registrations">/debug/registrations</a>`)
	}
	if len(s.Issuers) > 0 {
		p.w(` <a href="/debug/authn">/debug/authn</a>`)
	}
	if s.XDS != nil {
		p.w(` <a href="/debug/xds">/debug/xds</a>`)
	}
	p.w(` · <a href="/metrics">/metrics</a> · page rendered `, ts(s.Now), "</p>\n</body></html>\n")
}

func renderListeners(p pageWriter, v view) {
	p.w("<h2>Listeners</h2>\n<table id=\"listeners\"><tr><th>name</th><th>kind</th><th>address</th><th>routes from</th><th>routes</th><th>endpoints</th><th>open connections</th><th>max connections</th><th>max per source</th></tr>\n")
	for _, l := range v.Listeners.Rows {
		p.w(`<tr class="listener">`)
		p.td("name", l.Name)
		p.td("", l.Kind)
		if l.Address != "" {
			p.td("", l.Address)
		} else {
			p.w(`<td><span class="bad">not listening</span></td>`)
		}
		p.td("", l.RoutesFrom)
		p.tdn("n", l.Routes)
		p.tdn("n", l.Endpoints)
		p.tdn("n active", l.Active)
		p.tdn("n", l.MaxConnections)
		p.tdn("n", l.MaxConnectionsPerSource)
		p.w("</tr>\n")
	}
	if len(v.Listeners.Rows) == 0 {
		p.w(`<tr><td colspan="9" class="none">no listeners</td></tr>`)
	}
	p.w("</table>\n")
	p.more(v.Listeners.More, "listeners")
	p.w("\n<h2>Clusters</h2>\n<table id=\"clusters\"><tr><th>listener</th><th>cluster</th><th>routes</th><th>endpoints</th><th>healthy</th><th>ejected</th><th>open connections</th></tr>\n")
	for _, c := range v.Clusters.Rows {
		p.w(`<tr class="cluster">`)
		p.td("", c.Listener)
		p.td("name", c.Name)
		p.tdn("n", c.Routes)
		p.tdn("n", c.Endpoints)
		p.tdn("n "+okBad(c.Endpoints != c.Ejected), c.Endpoints-c.Ejected)
		cls := "n"
		if c.Ejected != 0 {
			cls = "n warn"
		}
		p.tdn(cls, c.Ejected)
		p.tdn("n active", c.Active)
		p.w("</tr>\n")
	}
	if len(v.Clusters.Rows) == 0 {
		p.w(`<tr><td colspan="7" class="none">no clusters routed</td></tr>`)
	}
	p.w("</table>\n")
	p.more(v.Clusters.More, "clusters")
	if len(v.Ejected.Rows) > 0 {
		p.w("<table id=\"ejected\"><tr><th>listener</th><th>cluster</th><th>ejected endpoint</th><th>locality</th><th>until</th></tr>\n")
		for _, e := range v.Ejected.Rows {
			p.w(`<tr class="ejected">`)
			p.td("", e.Listener)
			p.td("", e.Cluster)
			p.td("warn", e.Address)
			p.td("", e.Locality)
			p.td("", ts(e.Until))
			p.w("</tr>\n")
		}
		p.w("</table>\n")
		p.more(v.Ejected.More, "ejected endpoints")
	}
	p.w("\n")
}

func renderRefusals(p pageWriter, v view) {
	p.w("<h2>Refused or cut connections, by reason</h2>\n<table id=\"refusals\"><tr><th>listener</th><th>reason</th><th>connections</th></tr>\n")
	for _, r := range v.Refusals.Rows {
		p.w(`<tr class="refusal">`)
		p.td("", r.Listener)
		p.td("reason", r.Reason)
		p.tdn("n count", r.Count)
		p.w("</tr>\n")
	}
	if len(v.Refusals.Rows) == 0 {
		p.w(`<tr><td colspan="3" class="none">none since start</td></tr>`)
	}
	p.w("</table>\n")
	p.more(v.Refusals.More, "")
	p.w("\n")
}

func renderXDS(p pageWriter, v view) {
	p.w("<h2>xDS</h2>\n")
	x := v.S.XDS
	if x == nil {
		p.w("<p class=\"none\">no listener takes its routes from xDS</p>\n\n")
		return
	}
	p.w("<table id=\"xds\"><tr><th>server</th><th>stream</th><th>routes</th><th>last applied</th></tr>\n<tr>")
	p.td("", x.Server)
	if x.Connected {
		p.w(`<td><span class="ok">connected</span> since `, tsp(x.ConnectedSince), "</td>")
	} else {
		p.w(`<td><span class="bad">disconnected</span></td>`)
	}
	if x.Ready {
		p.w(`<td><span class="ok">received</span></td>`)
	} else {
		p.w(`<td><span class="warn">waiting for the first</span></td>`)
	}
	p.td("", tsp(x.LastApplied))
	p.w("</tr></table>\n<table id=\"xds-types\"><tr><th>type</th><th>version (last ACK)</th><th>last push</th><th>last ACK</th><th>last NACK</th><th>NACK error</th><th>responses</th></tr>\n")
	for _, t := range v.XDSTypes {
		p.w("<tr>")
		p.td("", t.Type)
		p.td("", t.Version)
		p.td("", ts(t.LastResponse))
		p.td("", ts(t.LastACK))
		p.td("", ts(t.LastNACK))
		p.td("bad", t.NACKError)
		p.tdn("n", t.Responses)
		p.w("</tr>\n")
	}
	if len(v.XDSTypes) == 0 {
		p.w(`<tr><td colspan="7" class="none">no response yet</td></tr>`)
	}
	p.w("</table>\n\n")
}

func renderIssuers(p pageWriter, v view) {
	p.w("<h2>Token issuers</h2>\n")
	if len(v.S.Issuers) == 0 {
		p.w("<p class=\"none\">no VM control endpoint</p>\n\n")
		return
	}
	p.w("<table id=\"issuers\"><tr><th>issuer</th><th>cluster</th><th>keys</th><th>key ids</th><th>fetched</th><th>last attempt</th><th>last error</th></tr>\n")
	for _, is := range v.Issuers.Rows {
		p.w("<tr>")
		p.td("", is.Issuer)
		p.td("", is.Cluster)
		p.tdn("n "+okBad(is.Ready), is.Keys)
		p.td("", is.KeyIDs)
		p.td("", ts(is.FetchedAt))
		p.td("", ts(is.LastAttempt))
		p.td("bad", is.LastError)
		p.w("</tr>\n")
	}
	p.w("</table>\n")
	p.more(v.Issuers.More, "issuers")
	p.w("\n")
}

func renderVMs(p pageWriter, v view) {
	p.w("<h2>VMs registered</h2>\n")
	if v.S.VMs == nil {
		p.w("<p class=\"none\">no registrar</p>\n\n")
		return
	}
	p.w(`<div class="meta" id="vm-states"><span>total <b>`)
	p.num(v.S.VMs.Total)
	p.w("</b></span>")
	for _, sc := range v.VMStates {
		p.w("<span>")
		p.esc(sc.State)
		p.w(" <b>")
		p.num(sc.Count)
		p.w("</b></span>")
	}
	p.w("</div>\n<table id=\"vms\"><tr><th>identity</th><th>cluster</th><th>group</th><th>entry</th><th>node</th><th>address</th><th>state</th><th>streams</th><th>connected</th><th>last error</th></tr>\n")
	for _, r := range v.VMs.Rows {
		p.w(`<tr class="vm">`)
		p.td("", r.Identity)
		p.td("", r.Cluster)
		p.td("", r.Namespace+"/"+r.Group)
		p.td("", r.Entry)
		p.td("w", r.NodeID)
		p.td("", r.Address)
		p.td("state", r.State)
		p.tdn("n", r.Streams)
		p.td("", ts(r.ConnectedAt))
		p.td("bad w", r.LastError)
		p.w("</tr>\n")
	}
	if len(v.VMs.Rows) == 0 {
		p.w(`<tr><td colspan="10" class="none">no VM registered</td></tr>`)
	}
	p.w("</table>\n")
	p.more(v.VMs.More, "VMs")
	p.w("\n")
}

const pageStyle = `<style>
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 4px}h2{font-size:14px;margin:18px 0 4px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:2px 0 4px;background:#fff}
th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;white-space:nowrap}
th{background:#eef}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#070;font-weight:600}.bad{color:#b00;font-weight:600}.warn{color:#a60;font-weight:600}
.more,.none,.meta{color:#666}.meta span{margin-right:14px}
td.w{white-space:normal;word-break:break-all;max-width:24em}
</style>`
