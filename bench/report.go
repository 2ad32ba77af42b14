package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// writeOutputs writes <base>.md, <base>.json and <base>-*.png and returns base.
func writeOutputs(o Options, r *Results) (string, error) {
	r.compute()
	name := r.Meta.Date + "-" + o.Host
	if o.Mode != Full {
		name += "-" + string(o.Mode)
	}
	base := filepath.Join(o.OutDir, name)
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return "", err
	}
	charts, err := writeCharts(base, r)
	if err != nil {
		return "", fmt.Errorf("bench: charts: %w", err)
	}
	md := markdown(r, name, charts)
	return base, os.WriteFile(base+".md", []byte(md), 0o644)
}

type chart struct{ file, title string }

func writeCharts(base string, r *Results) ([]chart, error) {
	var out []chart
	figs := func(keys ...string) ([]Figure, []string) {
		var fs []Figure
		var ks []string
		for _, k := range keys {
			if f, ok := r.figure(k); ok {
				fs = append(fs, f)
				ks = append(ks, k)
			}
		}
		return fs, ks
	}
	tg := r.Meta.Targets
	var bulkKeys, cpuKeys, rateKeys, cpuConnKeys, bulkGroups, rateGroups []string
	for _, n := range r.Meta.Plan.BulkStreams {
		bulkKeys = append(bulkKeys, fmt.Sprintf("bulk%d", n))
		cpuKeys = append(cpuKeys, fmt.Sprintf("cpugb%d", n))
		bulkGroups = append(bulkGroups, fmt.Sprintf("%d stream(s)", n))
	}
	for _, c := range r.Meta.Plan.RateConc {
		rateKeys = append(rateKeys, fmt.Sprintf("rate%d", c))
		cpuConnKeys = append(cpuConnKeys, fmt.Sprintf("cpuconn%d", c))
		rateGroups = append(rateGroups, fmt.Sprintf("%d concurrent clients", c))
	}
	add := func(suffix, title, ylabel string, keys, groups []string, legend map[string]string) error {
		fs, _ := figs(keys...)
		if len(fs) != len(keys) || len(fs) == 0 {
			return nil
		}
		file := base + "-" + suffix + ".png"
		if err := groupedBars(file, title, ylabel, tg, groups, fs, legend); err != nil {
			return err
		}
		out = append(out, chart{filepath.Base(file), title})
		return nil
	}
	if err := add("throughput", "Bulk throughput through the proxy (median)", "GB/s", bulkKeys, bulkGroups, nil); err != nil {
		return nil, err
	}
	if err := add("cpu-per-gb", "Proxy CPU per GB transferred (median, lower is better)", "CPU seconds per GB", cpuKeys, bulkGroups, nil); err != nil {
		return nil, err
	}
	if err := add("rate", "New TLS connections per second (full handshake + one exchange, median)", "connections/s", rateKeys, rateGroups, nil); err != nil {
		return nil, err
	}
	if err := add("cpu-per-conn", "Proxy CPU per new connection (median, lower is better)", "CPU µs per connection", cpuConnKeys, rateGroups, nil); err != nil {
		return nil, err
	}
	held, _ := r.figure("idleheld")
	fds, _ := r.figure("idlefds")
	legend := map[string]string{}
	for t, s := range held.Values {
		legend[t] = fmt.Sprintf("%s: %.0f conns held, %.1f fds each", labels[t], s.Median, fds.Values[t].Median)
	}
	if err := add("memory", "Proxy RSS per idle proxied connection (median, lower is better)", "KiB per connection", []string{"idlekib"}, []string{"idle TLS connections"}, legend); err != nil {
		return nil, err
	}
	if len(r.LatencyCurves) > 0 {
		file := base + "-latency.png"
		title := fmt.Sprintf("1 KiB request/response at %d req/s on %d connections: latency distribution (all runs)", r.Meta.Plan.LatencyRate, r.Meta.Plan.LatencyConns)
		if err := latencyChart(file, title, tg, r.LatencyCurves); err != nil {
			return nil, err
		}
		out = append(out, chart{filepath.Base(file), "Latency distribution"})
	}
	return out, nil
}

func cell(f Figure, t string) string {
	s, ok := f.Values[t]
	if !ok {
		return "—"
	}
	if s.N == 1 || s.Min == s.Max {
		return num(s.Median, f.Digits)
	}
	return fmt.Sprintf("%s (%s–%s)", num(s.Median, f.Digits), num(s.Min, f.Digits), num(s.Max, f.Digits))
}

func num(v float64, digits int) string {
	if digits == 0 && math.Abs(v) >= 1000 {
		return commas(int64(math.Round(v)))
	}
	return fmt.Sprintf("%.*f", digits, v)
}

func commas(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func ratio(f Figure, a, b string) string {
	x, ok1 := f.Values[a]
	y, ok2 := f.Values[b]
	if !ok1 || !ok2 || y.Median == 0 || strings.HasPrefix(f.Key, "add") || strings.HasPrefix(f.Key, "rateerr") {
		return "—"
	}
	return fmt.Sprintf("%.2f×", x.Median/y.Median)
}

func med(r *Results, key, t string) (float64, bool) {
	f, ok := r.figure(key)
	if !ok {
		return 0, false
	}
	s, ok := f.Values[t]
	return s.Median, ok
}

func markdown(r *Results, name string, charts []chart) string {
	var b strings.Builder
	m := r.Meta
	p := m.Plan
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# ewgate vs HAProxy vs nginx vs a direct connection: %s on %s\n\n", m.Date, m.Host)
	w("*ewgate* is the default build and config: its epoll relay engine. *ewgate (goroutines)* is the same binary with `relay.engine: goroutines` (two goroutines per connection in `io.Copy`), the shape the engine replaced.\n\n")
	w("`make bench` (mode `%s`), %.1f minutes. Every figure is the **median of %d runs (min–max)**; runs alternated between the targets (%s, then again) so that drift on this shared machine hits all of them alike. Raw runs: [%s.json](%s.json).\n\n",
		m.Mode, m.Seconds/60, p.Reps, strings.Join(m.Targets, ", "), name, name)

	w("## Setup\n\n")
	w("- Machine: %d CPUs (%s), kernel %s, %s; open-file limit %s (cannot be raised here). Shared with other work: expect noise, read the ratios.\n", m.CPUs, m.CPU, m.Kernel, m.GoVersion, m.NoFile)
	w("- ewgate `%s`, release build (`-trimpath -ldflags \"-s -w\"`), GOMAXPROCS=%d, log level `warn` (no access log line per connection). %s, `nbthread %d`, `mode tcp` + `req.ssl_sni`. nginx %s, `worker_processes %d`, `stream` + `ssl_preread`, `reuseport`, `proxy_half_close on` (without it nginx closes both sides at the first EOF, where ewgate and HAProxy pass the half-close on). No proxy logs connections. Configs: `bench/peers/`.\n",
		m.Versions[Ewgate], m.Workers, m.Versions[HAProxy], m.Workers, m.Versions[Nginx], m.Workers)
	w("- Traffic: TLS 1.3 (ECDSA P-256 certificate from a CA made for the run, X25519, no resumption: every connection is a full handshake), SNI `%s`, ALPN `istio`; the proxies pass it through by SNI to one Go TLS backend on loopback. *direct* is the same client talking to the backend with no proxy.\n", SNI)
	w("- Processes and cores: the client (the harness, Go), the backend (its own Go process, so client and backend sockets draw on separate open-file budgets) and the proxy all shared both cores; nothing was pinned with `taskset`. On 2 cores, pinning the proxy to one core and client+backend to the other would give the *direct* baseline half the machine while proxied runs got all of it, and TLS in client and backend needs more than one core; sharing both cores is the setup in which the ratios vs direct mean \"what the proxy costs\". The latency client sleeps with `nanosleep` (1 ns timer slack), never spinning; its senders are goroutines, not locked to threads.\n")
	turn, warmUp := latencyTurns(time.Duration(p.LatencySecs * float64(time.Second)))
	w("- Sizes: bulk %gs per run (%v streams); connection rate %gs per run at %v concurrent clients; latency %gs per target per run, %d persistent connections per target, %d req/s in total (fixed schedule, far below saturation), all targets measured together in turns of %s (a target sends only in its turns), so that the machine's own stalls fall on every target alike, after a warm-up of %s whose answers are not kept; idle: up to %d connections per proxy, %d run(s), each proxy restarted before it; control side: `go test -bench -benchtime %s -count %d`.\n\n",
		p.BulkSeconds, p.BulkStreams, p.RateSeconds, p.RateConc, p.LatencySecs, p.LatencyConns, p.LatencyRate, turn, warmUp, p.IdleGoal, p.IdleReps, p.ControlBench, p.ControlCount)
	if len(r.Integrity) > 0 {
		w("Before measuring, each target (%s) echoed 256 KiB of random data and streamed 200 ms of bulk data, checked byte for byte.\n\n", strings.Join(r.Integrity, ", "))
	}

	w("## Results\n\n")
	w("| figure | ewgate | ewgate (goroutines) | HAProxy | nginx | direct | ewgate / direct | ewgate / HAProxy |\n|---|---|---|---|---|---|---|---|\n")
	for _, f := range r.Figures {
		better := "lower is better"
		if f.Higher {
			better = "higher is better"
		}
		w("| %s (%s; %s) | %s | %s | %s | %s | %s | %s | %s |\n", f.Name, f.Unit, better, cell(f, Ewgate), cell(f, EwgateGo), cell(f, HAProxy), cell(f, Nginx), cell(f, Direct), ratio(f, Ewgate, Direct), ratio(f, Ewgate, HAProxy))
	}
	w("\nAdded latency is each proxy's percentile minus direct's in the same run (measured in the same turns), then the median over runs. Proxy CPU is user+system time from `/proc/<pid>/stat` of the proxy's processes (nginx: master and workers) across the timed window; RSS is `VmRSS` from `/proc/<pid>/status` summed over them, fds are counted in `/proc/<pid>/fd`, both measured with the connections held minus before they were opened. RSS before any connection is read the same way (`VmRSS`, `RssAnon`, `RssFile`) from each proxy freshly started, ready (ewgate: `/healthz/ready`; HAProxy and nginx: their listener accepts) and then idle %gs, before any connection of the run, median of %d fresh starts.\n\n", p.BaseIdleSeconds, p.Reps)

	w("## Against the targets of issues 8, 9 and 22\n\n")
	w("| target | measured | verdict |\n|---|---|---|\n")
	for _, row := range targetRows(r) {
		w("| %s | %s | %s |\n", row[0], row[1], row[2])
	}
	w("\n")

	if len(charts) > 0 {
		w("## Charts\n\n")
		for _, c := range charts {
			w("![%s](%s)\n\n", c.title, c.file)
		}
	}

	w("## Control side (ewgate only; no peer does this)\n\n")
	if len(r.Control) == 0 {
		w("Not run in this mode.\n\n")
	} else {
		w("`go test -bench` of the main module, median of %d runs (min–max):\n\n| benchmark | per second | ns/op | allocs/op |\n|---|---|---|---|\n", p.ControlCount)
		for _, cb := range r.Control {
			rate := "—"
			for unit, v := range cb.Metrics {
				if strings.HasSuffix(unit, "/s") && unit != "MB/s" {
					s := statOf(v)
					rate = fmt.Sprintf("%s %s (%s–%s)", num(s.Median, 0), unit, num(s.Min, 0), num(s.Max, 0))
				}
			}
			ns := statOf(cb.Metrics["ns/op"])
			al := statOf(cb.Metrics["allocs/op"])
			w("| `%s.%s` | %s | %s | %s |\n", cb.Package, cb.Name, rate, num(ns.Median, 0), num(al.Median, 0))
		}
		w("\n")
	}
	w("Time from a registration to the xDS push: `gateway/xdsclient.BenchmarkRegistrationToPush` (ns/op: a WorkloadEntry written until a subscribed gateway has applied the route, with a debounce of 5 ms, 100 ms or the default 20 ms, and with none or 10,000 other VMs registered); `gateway/controlplane.BenchmarkBurst1000Registrations` reports the pushes a burst of 1,000 registrations causes.\n\n")

	if len(r.Profiles) > 0 {
		w("## ewgate CPU profiles\n\n")
		w("Taken from ewgate's `/debug/pprof/profile` in extra runs after the measured ones (profiling costs a little, so these runs are not in the table). Go's profiler sees a system call as one frame (`Syscall6`): the kernel work inside `splice`, `connect` and `accept` is in it. `perf` would split that up, but it counts no events in the VMs these runs are made on.\n\n")
		for _, pr := range r.Profiles {
			w("### %s (%ds)\n\n```\n%s\n```\n\nBy cumulative time:\n\n```\n%s\n```\n\n", pr.Load, pr.Seconds, strings.Join(head(pr.Flat, 22), "\n"), strings.Join(head(pr.Cum, 22), "\n"))
		}
	}
	w("## Where ewgate falls short, and why\n\n%s\n", analysis(r))
	for _, n := range r.Notes {
		w("\nNote: %s\n", n)
	}
	return b.String()
}

func head(lines []string, n int) []string {
	if len(lines) > n {
		return lines[:n]
	}
	return lines
}

// Render rewrites the report, charts and JSON of an earlier run from its JSON file (for a
// change of the report's text without measuring again).
func Render(jsonFile string) (string, error) {
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		return "", err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("bench: %s: %w", filepath.Base(jsonFile), err)
	}
	return writeOutputs(Options{Mode: r.Meta.Mode, Host: r.Meta.Host, OutDir: filepath.Dir(jsonFile)}, &r)
}
