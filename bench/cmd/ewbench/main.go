// Command ewbench runs the side-by-side benchmark of ewgate, HAProxy, nginx and a direct
// connection (`make bench`; QUICK=1 for a short pass) and writes bench/results/. Its
// `backend` subcommand is the TLS backend, which the harness runs as a process of its own.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ewgate/ewgate/bench"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "backend" {
		fs := flag.NewFlagSet("backend", flag.ExitOnError)
		cert := fs.String("cert", "", "certificate chain (PEM)")
		key := fs.String("key", "", "private key (PEM)")
		fs.Parse(os.Args[2:])
		if err := bench.RunBackendProcess(*cert, *key, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "flood" {
		os.Exit(flood(os.Args[2:]))
	}
	var o bench.Options
	mode := flag.String("mode", "", "full, quick or tiny (default: quick when QUICK=1, else full)")
	flag.StringVar(&o.Repo, "repo", "..", "the ewgate main module")
	flag.StringVar(&o.OutDir, "out", "", "output directory (default: <repo>/bench/results; QUICK runs: <repo>/bench/.work/results)")
	flag.StringVar(&o.Host, "host", "", "host label in file names (default: short host name)")
	targets := flag.String("targets", "", "comma-separated subset of ewgate,haproxy,nginx,direct")
	flag.BoolVar(&o.NoControl, "no-control", false, "skip the authn/registrar Go benchmarks")
	flag.BoolVar(&o.NoProfile, "no-profile", false, "skip the ewgate pprof captures")
	render := flag.String("render", "", "only rewrite the report and charts of an earlier run from its JSON file")
	flag.Parse()
	if *render != "" {
		base, err := bench.Render(*render)
		if err != nil {
			fmt.Fprintln(os.Stderr, "ewbench:", err)
			os.Exit(1)
		}
		fmt.Println(base + ".md")
		return
	}
	o.Mode = bench.Full
	if q := os.Getenv("QUICK"); q != "" && q != "0" {
		o.Mode = bench.Quick
	}
	if *mode != "" {
		o.Mode = bench.Mode(*mode)
	}
	if o.OutDir == "" && o.Mode != bench.Full {
		o.OutDir = o.Repo + "/bench/.work/results"
	}
	if *targets != "" {
		o.Targets = strings.Split(*targets, ",")
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	o.BackendCmd = []string{self, "backend"}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, _, err := bench.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "ewbench:", err)
		os.Exit(1)
	}
}

// flood is `ewbench flood` (`make flood`): the flood and fault suite of issue 17, in full.
func flood(args []string) int {
	fs := flag.NewFlagSet("flood", flag.ExitOnError)
	var o bench.FloodOptions
	fs.StringVar(&o.Repo, "repo", "..", "the ewgate main module")
	fs.StringVar(&o.OutDir, "out", "", "output directory (default: <repo>/bench/results)")
	fs.IntVar(&o.FDLimit, "fd-limit", 4096, "the gateway's open-file limit")
	fs.BoolVar(&o.Short, "short", false, "the short form that make test runs")
	fs.Parse(args)
	if o.OutDir == "" {
		o.OutDir = o.Repo + "/bench/results"
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.RunFlood(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ewbench flood:", err)
		return 1
	}
	fmt.Println(bench.FloodTable(res))
	return 0
}
