// Command ewgate is the east-west gateway: it routes mesh and ingress TLS connections by SNI
// without terminating them.
//
//	ewgate serve --config FILE     serve until SIGTERM/SIGINT; SIGHUP or a file change reloads
//	ewgate check --config FILE     validate FILE; exit 0 when valid (printing any warnings), 1 with the errors when not
//	                               (--offline: all but the files it names, for CI away from the host)
//	ewgate vm-config ...           write a VM's onboarding bundle (docs/vm-onboarding.md)
//	ewgate status|routes|vms       read a running gateway's admin API and print tables (docs/operations.md)
//	ewgate certs control ...       write the 15012 serving certificate (istiod.istio-system.svc) and its CA
//	ewgate version                 print the version
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/ewgate/ewgate/gateway/config"
)

// version and revision are set at build time (the Makefile: -ldflags "-X main.version=$(git
// describe ...) -X main.revision=$(git rev-parse HEAD)"); a plain `go build` falls back to the
// module version and the VCS stamp Go records (none with -buildvcs=false).
var (
	version  = ""
	revision = ""
)

const usage = `usage: ewgate <command> [flags]

commands:
  serve --config FILE [--log-format json|console]   run the gateway
  check --config FILE [--offline]                   validate a config file (exit 0 valid, 1 not);
                                                    --offline: all but that the files it names exist
  vm-config --group NS/NAME --out DIR ...           write a VM's onboarding bundle (-h for flags)
  status [--admin URL | -c FILE] [-o json]          a running gateway: version, listeners, connections, xDS, issuers
  routes [--admin URL | -c FILE] [-o json]          its routes and endpoints (health, ejection, locality)
  vms    [--admin URL | -c FILE] [-o json]          the VMs registered through it
  certs control --out DIR [--ca-dir DIR]            write the VM control endpoint's (15012) serving certificate
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
		return cmdServe(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "vm-config":
		return cmdVMConfig(args[1:], stdout, stderr)
	case "status", "routes", "vms":
		return cmdIntrospect(args[0], args[1:], stdout, stderr)
	case "certs":
		return cmdCerts(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "ewgate %s (revision %s) %s %s/%s\n", versionString(), revisionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
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

// parseFlags parses args into fs. -h or --help prints the usage on stdout and returns
// flag.ErrHelp (the command exits 0); a flag error prints the usage on stderr.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	var out bytes.Buffer
	fs.SetOutput(&out)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		stdout.Write(out.Bytes())
	} else {
		stderr.Write(out.Bytes())
	}
	fs.SetOutput(stderr)
	return err
}

func revisionString() string {
	if revision != "" {
		return revision
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// configFlag parses the flags shared by serve and check.
func configFlags(name string, args []string, stdout, stderr io.Writer, extra func(*flag.FlagSet)) (string, error) {
	fs := flag.NewFlagSet("ewgate "+name, flag.ContinueOnError)
	path := fs.String("config", "", "path of the YAML config file (required)")
	if extra != nil {
		extra(fs)
	}
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
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
	var offline bool
	path, err := configFlags("check", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&offline, "offline", false, "check everything except that the files the config names exist and can be read (linting a config away from its host, in CI)")
	})
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "ewgate check: %v\n", err)
		return 2
	}
	load := config.Load
	if offline {
		load = config.LoadOffline
	}
	f, err := load(path)
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
