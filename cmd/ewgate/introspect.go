package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/statuspage"
	"github.com/ewgate/ewgate/registrar"
)

// `ewgate status`, `ewgate routes` and `ewgate vms` read a running gateway's debug admin API
// (GET /debug/status, /debug/routes, /debug/registrations) and print tables, or with -o json
// the JSON as served, in the spirit of `istioctl proxy-config`.

var introspectUsage = map[string]string{
	"status": "the gateway's version, uptime and readiness, its listeners with their open connections, refusals, xDS and token issuers",
	"routes": "every listener's routes: the SNI or host matched, the cluster, its endpoints with health, ejection and locality",
	"vms":    "the VMs registered through this gateway: identity, cluster, node, address, state, connected since",
}

// adminTarget is where to read the admin API, and where that came from (for errors).
type adminTarget struct {
	url, from string
}

func cmdIntrospect(name string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ewgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "", "base URL of the gateway's debug admin (default http://"+config.DefaultAdminAddress+")")
	var cfgPath string
	fs.StringVar(&cfgPath, "c", "", "read admin.address from this config file")
	fs.StringVar(&cfgPath, "config", "", "same as -c")
	output := fs.String("o", "table", "output: table or json")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: ewgate %s [--admin URL | -c FILE] [-o table|json]\n\nprints %s.\n\nflags:\n", name, introspectUsage[name])
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || (*output != "table" && *output != "json") || (*admin != "" && cfgPath != "") {
		fmt.Fprintf(stderr, "ewgate %s: want [--admin URL | -c FILE] [-o table|json], got %q\n", name, args)
		return 2
	}
	target, err := resolveAdmin(*admin, cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "ewgate %s: %v\n", name, err)
		return 2
	}
	path := map[string]string{"status": "/debug/status", "routes": "/debug/routes", "vms": "/debug/registrations"}[name]
	body, err := target.get(path)
	if errors.Is(err, errNoRegistrar) && name == "vms" {
		err = errors.New("this gateway runs no registrar (no registrar: section in its config): no VM is registered through it")
	}
	if err != nil {
		fmt.Fprintf(stderr, "ewgate %s: %v\n", name, err)
		return 1
	}
	if *output == "json" {
		stdout.Write(body)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	switch name {
	case "status":
		err = printStatus(tw, body)
	case "routes":
		err = printRoutes(tw, body)
	case "vms":
		err = printVMs(tw, body)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ewgate %s: the admin API at %s answered what this ewgate cannot read (a different version?): %v\n", name, target.url, err)
		return 1
	}
	tw.Flush()
	return 0
}

// resolveAdmin picks the admin API's URL: --admin, else the config file's admin.address, else
// the default address.
func resolveAdmin(admin, cfgPath string) (adminTarget, error) {
	switch {
	case admin != "":
		if !strings.Contains(admin, "://") {
			admin = "http://" + admin
		}
		return adminTarget{url: strings.TrimSuffix(admin, "/"), from: "--admin"}, nil
	case cfgPath != "":
		raw, err := os.ReadFile(cfgPath)
		if err != nil {
			return adminTarget{}, err
		}
		// Only admin.address is read: the rest of the file (certificates, stores) need not be
		// readable from where the command runs.
		var f struct {
			Admin struct {
				Address string `yaml:"address"`
			} `yaml:"admin"`
		}
		if err := yaml.Unmarshal(raw, &f); err != nil {
			return adminTarget{}, fmt.Errorf("%s: %w", cfgPath, err)
		}
		addr := f.Admin.Address
		if addr == "" {
			addr = config.DefaultAdminAddress
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return adminTarget{}, fmt.Errorf("%s: admin.address %q: %w", cfgPath, addr, err)
		}
		if port == "0" {
			return adminTarget{}, fmt.Errorf("%s: admin.address %s picks a free port at start; pass the one ewgate logged with --admin", cfgPath, addr)
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = "127.0.0.1" // listening on every address: loopback is one of them
		}
		return adminTarget{url: "http://" + net.JoinHostPort(host, port), from: cfgPath}, nil
	}
	return adminTarget{url: "http://" + config.DefaultAdminAddress, from: "the default"}, nil
}

var errNoRegistrar = errors.New("404")

func (a adminTarget) get(path string) ([]byte, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(a.url + path)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the admin API at %s (%s): %v\nis ewgate running? admin.address is %s; pass --admin URL or -c FILE",
			a.url, a.from, err, strings.TrimPrefix(a.url, "http://"))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s%s: %w", a.url, path, err)
	}
	if resp.StatusCode == http.StatusNotFound && path == "/debug/registrations" {
		return nil, errNoRegistrar
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s%s: %s: %s (is %s the debug admin, admin.address, of an ewgate of this version?)",
			a.url, path, resp.Status, clean(strings.TrimSpace(string(body))), a.url)
	}
	return body, nil
}

// clean makes a value safe for a terminal table: a value with a control character, a tab or a
// newline (a node id or a server name is chosen by a client) is printed quoted; empty is "-".
func clean(s string) string {
	if s == "" {
		return "-"
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func whenp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return when(*t)
}

func row(w io.Writer, cells ...any) {
	s := make([]string, len(cells))
	for i, c := range cells {
		switch v := c.(type) {
		case string:
			s[i] = clean(v)
		default:
			s[i] = fmt.Sprint(v)
		}
	}
	fmt.Fprintln(w, strings.Join(s, "\t"))
}

func printStatus(w io.Writer, body []byte) error {
	var st statuspage.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return err
	}
	ready := "not ready"
	if st.Ready {
		ready = "ready"
	}
	fmt.Fprintf(w, "ewgate %s\t%s\tuptime %s\tstarted %s\troute snapshot v%d\n", clean(st.Version), ready,
		(time.Duration(st.UptimeSeconds) * time.Second).String(), when(st.Started), st.SnapshotVersion)
	if st.Control != "" {
		fmt.Fprintf(w, "control endpoint: %s\n", clean(st.Control))
	}
	fmt.Fprintln(w)
	row(w, "LISTENER", "KIND", "ADDRESS", "ROUTES FROM", "ROUTES", "ENDPOINTS", "OPEN", "MAX", "MAX/SOURCE")
	for _, l := range st.Listeners {
		row(w, l.Name, l.Kind, l.Address, l.RoutesFrom, l.Routes, l.Endpoints, l.Active, l.MaxConnections, l.MaxConnectionsPerSource)
	}
	fmt.Fprintln(w)
	if len(st.Clusters) == 0 {
		fmt.Fprintln(w, "no cluster routed")
	} else {
		row(w, "LISTENER", "CLUSTER", "ENDPOINTS", "HEALTHY", "EJECTED", "OPEN")
	}
	for _, c := range st.Clusters {
		row(w, c.Listener, c.Name, c.Endpoints, c.Endpoints-c.Ejected, c.Ejected, c.Active)
	}
	if len(st.Ejected) > 0 {
		fmt.Fprintln(w)
		row(w, "LISTENER", "CLUSTER", "EJECTED ENDPOINT", "LOCALITY", "UNTIL")
		for _, e := range st.Ejected {
			row(w, e.Listener, e.Cluster, e.Address, e.Locality, when(e.Until))
		}
	}
	if len(st.Refusals) > 0 {
		fmt.Fprintln(w)
		row(w, "LISTENER", "REFUSED OR CUT", "CONNECTIONS")
		for _, r := range st.Refusals {
			row(w, r.Listener, r.Reason, r.Count)
		}
	}
	if x := st.XDS; x != nil {
		fmt.Fprintln(w)
		stream := "disconnected"
		if x.Connected {
			stream = "connected since " + whenp(x.ConnectedSince)
		}
		routes := "waiting for the first"
		if x.Ready {
			routes = "received, last applied " + whenp(x.LastApplied)
		}
		row(w, "XDS SERVER", "STREAM", "ROUTES")
		row(w, x.Server, stream, routes)
		fmt.Fprintln(w)
		row(w, "XDS TYPE", "VERSION", "LAST PUSH", "LAST ACK", "LAST NACK", "NACK ERROR")
		for _, t := range x.Types {
			row(w, t.Type, t.Version, when(t.LastResponse), when(t.LastACK), when(t.LastNACK), t.NACKError)
		}
	}
	if len(st.Issuers) > 0 {
		fmt.Fprintln(w)
		row(w, "ISSUER", "CLUSTER", "KEYS", "FETCHED", "LAST ERROR")
		for _, is := range st.Issuers {
			row(w, is.Issuer, is.Cluster, is.Keys, when(is.FetchedAt), is.LastError)
		}
	}
	if v := st.VMs; v != nil {
		states := make([]string, 0, len(v.ByState))
		for s, n := range v.ByState {
			states = append(states, fmt.Sprintf("%s %d", clean(s), n))
		}
		sort.Strings(states)
		fmt.Fprintf(w, "\nVMs registered: %d", v.Total)
		if len(states) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(states, ", "))
		}
		fmt.Fprintln(w, "; ewgate vms lists them")
	}
	return nil
}

func printRoutes(w io.Writer, body []byte) error {
	var v dataplane.RoutesView
	if err := json.Unmarshal(body, &v); err != nil {
		return err
	}
	names := make([]string, 0, len(v.Listeners))
	for n := range v.Listeners {
		names = append(names, n)
	}
	sort.Strings(names)
	row(w, "LISTENER", "MATCH", "CLUSTER", "LB", "ENDPOINT", "WEIGHT", "HEALTH", "OPEN", "LOCALITY")
	for _, n := range names {
		for _, r := range v.Listeners[n].Routes {
			if len(r.Endpoints) == 0 {
				row(w, n, r.Match, r.Cluster, r.Policy, "", "", "no endpoint", 0, "")
			}
			for _, e := range r.Endpoints {
				health := "healthy"
				if e.EjectedUntil != nil {
					health = "ejected until " + when(*e.EjectedUntil)
				}
				row(w, n, r.Match, r.Cluster, r.Policy, e.Address, e.Weight, health, e.Active, e.Locality)
			}
		}
	}
	return nil
}

func printVMs(w io.Writer, body []byte) error {
	var regs []registrar.Registration
	if err := json.Unmarshal(body, &regs); err != nil {
		return err
	}
	row(w, "IDENTITY", "CLUSTER", "NODE", "ADDRESS", "STATE", "ENTRY", "STREAMS", "CONNECTED SINCE")
	for _, r := range regs {
		row(w, r.Identity, r.Cluster, r.NodeID, r.Address, r.State, r.Namespace+"/"+r.Entry, r.Streams, when(r.ConnectedAt))
	}
	return nil
}
