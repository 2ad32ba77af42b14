package statuspage

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/registrar"
)

// hostile is what a client may put in a node id or a name: markup, quotes, a script.
const hostile = `<script>alert(1)</script><img src=x onerror=alert(2)>"'&`

// TestPageEscapesAndCaps serves the page over loopback with more VMs than a table shows, each
// with a hostile node id: nothing of it is markup on the page, the table stops at MaxRows and
// says how many more there are, and the JSON page lists the counts.
func TestPageEscapesAndCaps(t *testing.T) {
	var vms []registrar.Registration
	for i := range MaxRows + 50 {
		vms = append(vms, registrar.Registration{Identity: "spiffe://cluster.local/ns/vms/sa/web", NodeID: hostile, State: "registered",
			Address: fmt.Sprintf("10.0.%d.%d", i/256, i%256), ConnectedAt: time.Unix(1700000000, 0)})
	}
	start := time.Unix(1700000000, 0)
	src := Sources{Version: "v1.2.3", Started: start, Now: func() time.Time { return start.Add(90 * time.Second) },
		DataPlane: func() dataplane.Status {
			return dataplane.Status{Ready: true, Listeners: []dataplane.ListenerStatus{{Name: hostile, Kind: "mesh", Active: 3}},
				Refusals: []dataplane.Refusal{{Listener: hostile, Reason: "unknown_sni", Count: 7}},
				Ejected:  []dataplane.EjectedStatus{{Listener: "mesh", Cluster: "c", Address: "10.0.0.9:80", Until: start.Add(time.Hour)}}}
		},
		VMs: func() []registrar.Registration { return vms },
	}
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", Handler(src.Gather))
	mux.Handle("GET /debug/status", JSONHandler(src.Gather))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	get := func(path string) (*http.Response, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, page := get("/")
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if strings.Contains(page, "<script") || strings.Contains(page, "<img") {
		t.Fatalf("page carries a client's markup:\n%s", page)
	}
	if n := strings.Count(page, "&lt;script&gt;alert(1)&lt;/script&gt;"); n != MaxRows+2 { // the VMs shown, the listener, the refusal
		t.Errorf("escaped hostile value shown %d times; want %d", n, MaxRows+2)
	}
	if n := strings.Count(page, `<tr class="vm">`); n != MaxRows {
		t.Errorf("%d VM rows; want MaxRows (%d)", n, MaxRows)
	}
	for _, want := range []string{`<div class="more">50 more VMs</div>`, `<span id="version">v1.2.3</span>`, `<b id="uptime">1m30s</b>`,
		`<td class="reason">unknown_sni</td><td class="n count">7</td>`, `<td class="n active">3</td>`,
		`<tr class="ejected"><td>mesh</td><td>c</td><td class="warn">10.0.0.9:80</td><td></td><td>2023-11-14 23:13:20Z</td></tr>`} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}

	_, body := get("/debug/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if st.VMs == nil || st.VMs.Total != MaxRows+50 || st.VMs.ByState["registered"] != MaxRows+50 || st.UptimeSeconds != 90 || st.Listeners[0].Name != hostile {
		t.Fatalf("/debug/status: %s", body)
	}
}
