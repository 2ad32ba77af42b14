// Command ewgate is the east-west gateway: it routes mesh and ingress TLS connections by SNI
// without terminating them.
//
//	ewgate serve --config FILE     serve until SIGTERM/SIGINT; SIGHUP or a file change reloads
//	ewgate check --config FILE     validate FILE; exit 0 when valid (printing any warnings), 1 with the errors when not
//	ewgate vm-config ...           write a VM's onboarding bundle (docs/vm-onboarding.md)
//	ewgate status|routes|vms       read a running gateway's admin API and print tables (docs/operations.md)
//	ewgate version                 print the version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/ewgate/ewgate/gateway/config"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = ""

const usage = `usage: ewgate <command> [flags]

commands:
  serve --config FILE [--log-format json|console]   run the gateway
  check --config FILE                               validate a config file (exit 0 valid, 1 not)
  vm-config --group NS/NAME --out DIR ...           write a VM's onboarding bundle (-h for flags)
  status [--admin URL | -c FILE] [-o json]          a running gateway: version, listeners, connections, xDS, issuers
  routes [--admin URL | -c FILE] [-o json]          its routes and endpoints (health, ejection, locality)
  vms    [--admin URL | -c FILE] [-o json]          the VMs registered through it
  version                                           print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return cmdServe(args[1:], stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "vm-config":
		return cmdVMConfig(args[1:], stdout, stderr)
	case "status", "routes", "vms":
		return cmdIntrospect(args[0], args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "ewgate %s %s %s/%s\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "ewgate: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// configFlag parses the flags shared by serve and check.
func configFlags(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (string, error) {
	fs := flag.NewFlagSet("ewgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path of the YAML config file (required)")
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if *path == "" {
		return "", errors.New("--config FILE is required (an annotated example: deploy/local/ewgate.yaml)")
	}
	if fs.NArg() > 0 {
		return "", fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return *path, nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	path, err := configFlags("check", args, stderr, nil)
	if err != nil {
		fmt.Fprintf(stderr, "ewgate check: %v\n", err)
		return 2
	}
	f, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		return 1
	}
	for _, w := range f.Warnings {
		fmt.Fprintf(stdout, "warning: %v\n", w)
	}
	fmt.Fprintf(stdout, "%s: valid (listeners: %d, static clusters: %d, services: %d)\n", path, len(f.Listeners), len(f.Clusters), len(f.Services))
	return 0
}
