package statuspage

// pageHTML is the status page. Every value goes through html/template's escaping; the page has
// no script and loads nothing.
const pageHTML = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>ewgate {{.S.Version}} status</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 4px}h2{font-size:14px;margin:18px 0 4px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:2px 0 4px;background:#fff}
th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;white-space:nowrap}
th{background:#eef}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#070;font-weight:600}.bad{color:#b00;font-weight:600}.warn{color:#a60;font-weight:600}
.more,.none,.meta{color:#666}.meta span{margin-right:14px}
td.w{white-space:normal;word-break:break-all;max-width:24em}
</style></head><body>
<h1>ewgate <span id="version">{{.S.Version}}</span></h1>
<div class="meta">
<span id="ready">{{if .S.Ready}}<b class="ok">ready</b>{{else}}<b class="bad">not ready</b>{{end}}</span>
<span>uptime <b id="uptime">{{.Uptime}}</b></span>
<span>started {{ts .S.Started}}</span>
<span>route snapshot v{{.S.SnapshotVersion}} built {{ts .S.SnapshotBuilt}}</span>
<span>{{.S.GoVersion}}</span>
{{with .S.Control}}<span>control endpoint <b id="control" class="{{if eq . "ready"}}ok{{else}}bad{{end}}">{{.}}</b></span>{{end}}
</div>

<h2>Listeners</h2>
<table id="listeners"><tr><th>name</th><th>kind</th><th>address</th><th>routes from</th><th>routes</th><th>endpoints</th><th>open connections</th><th>max connections</th><th>max per source</th></tr>
{{range .Listeners.Rows}}<tr class="listener"><td class="name">{{.Name}}</td><td>{{.Kind}}</td><td>{{if .Address}}{{.Address}}{{else}}<span class="bad">not listening</span>{{end}}</td><td>{{.RoutesFrom}}</td><td class="n">{{.Routes}}</td><td class="n">{{.Endpoints}}</td><td class="n active">{{.Active}}</td><td class="n">{{.MaxConnections}}</td><td class="n">{{.MaxConnectionsPerSource}}</td></tr>
{{else}}<tr><td colspan="9" class="none">no listeners</td></tr>{{end}}</table>
{{with .Listeners.More}}<div class="more">{{.}} more listeners</div>{{end}}

<h2>Clusters</h2>
<table id="clusters"><tr><th>listener</th><th>cluster</th><th>routes</th><th>endpoints</th><th>healthy</th><th>ejected</th><th>open connections</th></tr>
{{range .Clusters.Rows}}<tr class="cluster"><td>{{.Listener}}</td><td class="name">{{.Name}}</td><td class="n">{{.Routes}}</td><td class="n">{{.Endpoints}}</td><td class="n {{if eq .Endpoints .Ejected}}bad{{else}}ok{{end}}">{{sub .Endpoints .Ejected}}</td><td class="n{{if .Ejected}} warn{{end}}">{{.Ejected}}</td><td class="n active">{{.Active}}</td></tr>
{{else}}<tr><td colspan="7" class="none">no clusters routed</td></tr>{{end}}</table>
{{with .Clusters.More}}<div class="more">{{.}} more clusters</div>{{end}}
{{if .Ejected.Rows}}<table id="ejected"><tr><th>listener</th><th>cluster</th><th>ejected endpoint</th><th>locality</th><th>until</th></tr>
{{range .Ejected.Rows}}<tr class="ejected"><td>{{.Listener}}</td><td>{{.Cluster}}</td><td class="warn">{{.Address}}</td><td>{{.Locality}}</td><td>{{ts .Until}}</td></tr>
{{end}}</table>
{{with .Ejected.More}}<div class="more">{{.}} more ejected endpoints</div>{{end}}{{end}}

<h2>Refused or cut connections, by reason</h2>
<table id="refusals"><tr><th>listener</th><th>reason</th><th>connections</th></tr>
{{range .Refusals.Rows}}<tr class="refusal"><td>{{.Listener}}</td><td class="reason">{{.Reason}}</td><td class="n count">{{.Count}}</td></tr>
{{else}}<tr><td colspan="3" class="none">none since start</td></tr>{{end}}</table>
{{with .Refusals.More}}<div class="more">{{.}} more</div>{{end}}

<h2>xDS</h2>
{{with .S.XDS}}<table id="xds"><tr><th>server</th><th>stream</th><th>routes</th><th>last applied</th></tr>
<tr><td>{{.Server}}</td><td>{{if .Connected}}<span class="ok">connected</span> since {{tsp .ConnectedSince}}{{else}}<span class="bad">disconnected</span>{{end}}</td><td>{{if .Ready}}<span class="ok">received</span>{{else}}<span class="warn">waiting for the first</span>{{end}}</td><td>{{tsp .LastApplied}}</td></tr></table>
<table id="xds-types"><tr><th>type</th><th>version (last ACK)</th><th>last push</th><th>last ACK</th><th>last NACK</th><th>NACK error</th><th>responses</th></tr>
{{range $.XDSTypes}}<tr><td>{{.Type}}</td><td>{{.Version}}</td><td>{{ts .LastResponse}}</td><td>{{ts .LastACK}}</td><td>{{ts .LastNACK}}</td><td class="bad">{{.NACKError}}</td><td class="n">{{.Responses}}</td></tr>
{{else}}<tr><td colspan="7" class="none">no response yet</td></tr>{{end}}</table>
{{else}}<p class="none">no listener takes its routes from xDS</p>{{end}}

<h2>Token issuers</h2>
{{if .S.Issuers}}<table id="issuers"><tr><th>issuer</th><th>cluster</th><th>keys</th><th>key ids</th><th>fetched</th><th>last attempt</th><th>last error</th></tr>
{{range .Issuers.Rows}}<tr><td>{{.Issuer}}</td><td>{{.Cluster}}</td><td class="n {{if .Ready}}ok{{else}}bad{{end}}">{{.Keys}}</td><td>{{.KeyIDs}}</td><td>{{ts .FetchedAt}}</td><td>{{ts .LastAttempt}}</td><td class="bad">{{.LastError}}</td></tr>
{{end}}</table>
{{with .Issuers.More}}<div class="more">{{.}} more issuers</div>{{end}}
{{else}}<p class="none">no VM control endpoint</p>{{end}}

<h2>VMs registered</h2>
{{with .S.VMs}}<div class="meta" id="vm-states"><span>total <b>{{.Total}}</b></span>{{range $.VMStates}}<span>{{.State}} <b>{{.Count}}</b></span>{{end}}</div>
<table id="vms"><tr><th>identity</th><th>cluster</th><th>group</th><th>entry</th><th>node</th><th>address</th><th>state</th><th>streams</th><th>connected</th><th>last error</th></tr>
{{range $.VMs.Rows}}<tr class="vm"><td>{{.Identity}}</td><td>{{.Cluster}}</td><td>{{.Namespace}}/{{.Group}}</td><td>{{.Entry}}</td><td class="w">{{.NodeID}}</td><td>{{.Address}}</td><td class="state">{{.State}}</td><td class="n">{{.Streams}}</td><td>{{ts .ConnectedAt}}</td><td class="bad w">{{.LastError}}</td></tr>
{{else}}<tr><td colspan="10" class="none">no VM registered</td></tr>{{end}}</table>
{{with $.VMs.More}}<div class="more">{{.}} more VMs</div>{{end}}
{{else}}<p class="none">no registrar</p>{{end}}

<h2>More</h2>
<p class="meta">JSON: <a href="/debug/status">/debug/status</a> <a href="/debug/routes">/debug/routes</a>{{if .S.VMs}} <a href="/debug/registrations">/debug/registrations</a>{{end}}{{if .S.Issuers}} <a href="/debug/authn">/debug/authn</a>{{end}}{{if .S.XDS}} <a href="/debug/xds">/debug/xds</a>{{end}} · <a href="/metrics">/metrics</a> · page rendered {{ts .S.Now}}</p>
</body></html>
`
