// Command etcd runs a single-member etcd (go.etcd.io/etcd/server/v3/embed, the version
// k8s.io/kubernetes pins in e2e/go.mod) for the e2e kube-apiserver. Embedding instead of the
// Debian etcd-server package keeps the version pinned by go.sum next to the apiserver it serves,
// needs no apt, and cannot leave a system service running behind the tests.
//
// It prints "etcd: ready" on stdout once it serves clients and exits cleanly on SIGTERM/SIGINT.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	dataDir := flag.String("data-dir", "", "data directory (required)")
	clientURL := flag.String("client-url", "http://127.0.0.1:2379", "URL to listen on and advertise for clients")
	peerURL := flag.String("peer-url", "http://127.0.0.1:2380", "URL to listen on and advertise for peers")
	logLevel := flag.String("log-level", "warn", "debug, info, warn or error")
	flag.Parse()
	if err := run(*dataDir, *clientURL, *peerURL, *logLevel); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		os.Exit(1)
	}
}

func run(dataDir, clientURL, peerURL, logLevel string) error {
	if dataDir == "" {
		return fmt.Errorf("-data-dir is required")
	}
	cu, err := url.Parse(clientURL)
	if err != nil {
		return fmt.Errorf("-client-url: %w", err)
	}
	pu, err := url.Parse(peerURL)
	if err != nil {
		return fmt.Errorf("-peer-url: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "e2e"
	cfg.Dir = dataDir
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.LogLevel = logLevel
	cfg.LogOutputs = []string{"stderr"}
	// Test data: losing it on a crash is fine, and fsync on a shared disk is slow.
	cfg.UnsafeNoFsync = true

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("etcd: ready")
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		return fmt.Errorf("not ready after 60s")
	case s := <-sigs:
		return fmt.Errorf("stopped by %v before ready", s)
	}
	select {
	case err := <-e.Err():
		return fmt.Errorf("serve: %w", err)
	case <-sigs:
		return nil
	}
}
