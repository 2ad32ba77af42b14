// Command peers fetches the pinned real peers of the e2e suite into the repository's git-ignored
// cache (.cache/peers), printing each step and its duration. A second run does no work.
//
//	cd e2e && go run ./cmd/peers          # fetch what is missing
//	cd e2e && go run ./cmd/peers -check   # exit 1 if anything is missing, fetch nothing
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ewgate/ewgate/e2e/peers"
)

func main() {
	check := flag.Bool("check", false, "only report whether the cache is complete")
	flag.Parse()
	l, err := peers.Locate()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *check {
		if err := peers.Check(l); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("peers: all up to date in", l.Dir)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	if err := peers.Ensure(ctx, l, logf); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
