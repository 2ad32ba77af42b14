package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

const clusterType = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

// registrations runs n VMs that auto-register at once, each on its own connection (sources
// 127.0.0.100-131): an ADS stream whose node names the WorkloadGroup and a distinct address,
// held until release is closed or the stream fails. registered counts the streams that got
// their first response (the entry existed by then). It returns when every VM is gone.
func (e *floodEnv) registrations(ctx context.Context, n int, token string, release <-chan struct{}, registered, failed *atomic.Int64) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := e.registerVM(ctx, i, token, release, registered); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
}

func (e *floodEnv) registerVM(ctx context.Context, i int, token string, release <-chan struct{}, registered *atomic.Int64) error {
	cc, err := e.vmDial(srcIP(100 + i%32))
	if err != nil {
		return err
	}
	defer cc.Close()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+token, "ClusterID", floodCluster)
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(sctx)
	if err != nil {
		return err
	}
	ip := fmt.Sprintf("10.77.%d.%d", i/250, 1+i%250)
	md, _ := structpb.NewStruct(map[string]any{"AUTO_REGISTER_GROUP": vmGroup, "INSTANCE_IPS": ip,
		"CLUSTER_ID": floodCluster, "NAMESPACE": vmNamespace})
	node := &corev3.Node{Id: "sidecar~" + ip + "~web-" + ip + "." + vmNamespace + "~" + vmNamespace + ".svc.cluster.local", Metadata: md}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		return err
	}
	got := make(chan error, 1)
	go func() {
		_, err := ads.Recv()
		got <- err
		for err == nil { // drain pushes until the stream ends (cancel below ends it)
			_, err = ads.Recv()
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			return err
		}
		registered.Add(1)
	case <-release:
		cancel()
		return errors.New("released before registered")
	}
	<-release
	cancel()
	return nil
}

// waitNoEntries waits until the store has held no WorkloadEntry for settle, or limit passes; it
// returns the entries left (the leaks). settle is longer than the writes still queued could take
// to land (a leaked write lands after the store recovers: waiting only for the first zero would
// miss it).
func (e *floodEnv) waitNoEntries(ctx context.Context, settle, limit time.Duration) []string {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var zeroSince time.Time
	for {
		left := e.entries()
		switch {
		case len(left) > 0:
			zeroSince = time.Time{}
		case zeroSince.IsZero():
			zeroSince = time.Now()
		case time.Since(zeroSince) >= settle:
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return left
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// faultKill: VMs register; once some have (or 5 s passed) the gateway is SIGKILLed, the VMs go,
// the gateway is restarted on the same config and store, and the registrar's start-up must
// mark their entries disconnected and delete them after the grace period.
func (e *floodEnv) faultKill(ctx context.Context, n int, token string) (string, []string, error) {
	release := make(chan struct{})
	var registered, failed atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { e.registrations(ctx, n, token, release, &registered, &failed) })
	waitFor(ctx, nil, "half registered", 5*time.Second, func() bool { return registered.Load() >= int64(n/2) })
	kill(e.gateway())
	close(release)
	wg.Wait()
	before := len(e.entries())
	if err := e.startGateway(ctx); err != nil {
		return "", nil, fmt.Errorf("flood: restart after SIGKILL: %w", err)
	}
	leaks := e.waitNoEntries(ctx, e.grace+2*time.Second, 3*e.grace+15*time.Second)
	return fmt.Sprintf("%d of %d registered before SIGKILL, %d entries in the store at restart", registered.Load(), n, before), leaks, nil
}

// faultFullStore: the store's tmpfs is filled, VMs try to register and go away, space returns;
// nothing they asked for may be left once the registrar's retries land and the grace period has
// passed. While the store's journal has room (it is preallocated: up to 1/16 of the free space)
// a registration is durable in it and its file is written once space returns; after that each
// wait ends in Unavailable after register_timeout.
func (e *floodEnv) faultFullStore(ctx context.Context, n int, token string) (string, []string, error) {
	filler := filepath.Join(e.storeDir, "filler")
	if err := fill(filler); err != nil {
		return "", nil, err
	}
	removed := false
	defer func() {
		if !removed {
			os.Remove(filler)
		}
	}()
	release := make(chan struct{})
	var registered, failed atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { e.registrations(ctx, n, token, release, &registered, &failed) })
	// Every VM's wait ends (register_timeout 2s) in an error, or registers if the journal has room.
	waitFor(ctx, nil, "registrations ended", 15*time.Second, func() bool { return registered.Load()+failed.Load() >= int64(n) })
	close(release)
	wg.Wait()
	os.Remove(filler)
	removed = true
	leaks := e.waitNoEntries(ctx, e.grace+3*time.Second, 3*e.grace+15*time.Second)
	return fmt.Sprintf("%d VMs, %d registered and %d refused while the store was full", n, registered.Load(), failed.Load()), leaks, nil
}

// fill writes filler until the file system is full (ENOSPC), at most 64 MiB.
func fill(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("flood: fill the store: %w", err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for range 1024 {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return fmt.Errorf("flood: fill the store: %w", err)
		}
	}
	return errors.New("flood: the store's file system did not fill up within 64 MiB (is it the tmpfs?)")
}

// faultXDSLost: the route source is SIGKILLed while traffic flows, stays away for half the
// window, and is started again; the gateway must keep routing on the last routes it had.
func (e *floodEnv) faultXDSLost(ctx context.Context, window time.Duration) (string, error) {
	kill(e.routes())
	t := time.NewTimer(window / 2)
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	if err := e.startCP(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("route source down for %s, then back", window/2), nil
}

// faultReloads: SIGHUPs and rewrites of the config file (some truncated mid-way, which must be
// refused and keep the serving config) every 25 ms, at most n times, while traffic flows.
func (e *floodEnv) faultReloads(ctx context.Context, n int) string {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	hups, writes, broken := 0, 0, 0
	for i := 0; i < n && ctx.Err() == nil; i++ {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
		switch i % 4 {
		case 0, 2:
			if p := e.gateway(); p != nil && !p.exited() {
				p.cmd.Process.Signal(syscall.SIGHUP)
				hups++
			}
		case 1:
			os.WriteFile(e.cfgPath, []byte(e.gatewayConfig(i)), 0o600)
			writes++
		case 3:
			// A file caught half-written: cut inside the mesh listener's flow mapping, so it can only
			// fail to parse (a cut between sections could be a valid, smaller config).
			body := e.gatewayConfig(i)
			cut := strings.Index(body, "routes_from")
			os.WriteFile(e.cfgPath, []byte(body[:cut]), 0o600)
			broken++
		}
	}
	os.WriteFile(e.cfgPath, []byte(e.gatewayConfig(n)), 0o600)
	return fmt.Sprintf("%d SIGHUPs, %d rewrites, %d half-written files", hups, writes, broken)
}
