package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/xds"
	"github.com/ewgate/ewgate/gateway/xds/ca"
	"github.com/ewgate/ewgate/gateway/xds/controlplane"
	"github.com/ewgate/ewgate/registrar"
)

// xdsParts are the built-in control plane and the gateway's xDS client, when the config asks
// for them. Changing their settings needs a restart; services follow reloads.
type xdsParts struct {
	cp     *controlplane.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
	store  *registrar.FileStore
}

// startXDS starts the built-in control plane (standalone mode) and the gateway's xDS client
// (routes_from: xds listeners), as cfg says.
func (s *server) startXDS(cfg *config.File, reg prometheus.Registerer) (*xdsParts, error) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &xdsParts{cancel: cancel}
	target := cfg.XDS.Server
	if cfg.ControlPlaneEnabled() {
		addr, err := p.startControlPlane(ctx, cfg, reg, s.log)
		if err != nil {
			p.stop()
			return nil, err
		}
		if target == config.XDSServerBuiltin {
			target = addr
		}
	}
	if !cfg.UsesXDS() {
		return p, nil
	}
	var tlsCfg *tls.Config
	if t := cfg.XDS.TLS; t != nil {
		tlsCfg = &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
		if t.CAFile != "" {
			pem, err := os.ReadFile(t.CAFile)
			if err != nil {
				p.stop()
				return nil, fmt.Errorf("xds.tls.ca_file: %w", err)
			}
			tlsCfg.RootCAs = x509.NewCertPool()
			if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
				p.stop()
				return nil, errors.New("xds.tls.ca_file: no PEM certificate in it")
			}
		}
	}
	var listeners []string
	for _, l := range cfg.Listeners {
		if l.Kind == config.KindMesh && l.RoutesFrom == config.RoutesXDS {
			listeners = append(listeners, l.Name)
		}
	}
	c := xds.New(xds.Options{
		Target: target, TLS: tlsCfg, TokenFile: cfg.XDS.TokenFile, Node: xds.NewNode(cfg.XDS.Node, versionString()),
		MeshPort: cfg.XDS.MeshPort, Listeners: listeners, Sink: s.gw,
		InitialBackoff: cfg.XDS.InitialBackoff, MaxBackoff: cfg.XDS.MaxBackoff,
		Logger: s.log.Named("xds"), Registerer: reg,
	})
	p.wg.Add(1)
	go func() { defer p.wg.Done(); c.Run(ctx) }()
	s.log.Info("xds client started", zap.String("server", target), zap.Strings("listeners", listeners))
	return p, nil
}

func (p *xdsParts) startControlPlane(ctx context.Context, cfg *config.File, reg prometheus.Registerer, log *zap.Logger) (string, error) {
	cpc := cfg.ControlPlane
	opts := controlplane.Options{
		Services: cfg.Services, Network: cfg.XDS.Node.Network, MeshPort: cfg.XDS.MeshPort,
		Debounce: cpc.Debounce, MaxDelay: cpc.MaxPushDelay, Logger: log.Named("controlplane"), Registerer: reg,
	}
	if cpc.WorkloadEntriesDir != "" {
		st, err := registrar.OpenFileStore(cpc.WorkloadEntriesDir)
		if err != nil {
			return "", fmt.Errorf("control_plane.workload_entries_dir: %w", err)
		}
		p.store = st
		opts.Entries = st.WorkloadEntries()
	}
	if cpc.CA.DataDir != "" || cpc.CA.CertFile != "" {
		a, err := ca.Open(ca.Options{DataDir: cpc.CA.DataDir, CertFile: cpc.CA.CertFile, KeyFile: cpc.CA.KeyFile,
			TTL: cpc.CA.TTL, MaxTTL: cpc.CA.MaxTTL, TrustDomain: cpc.CA.TrustDomain, Logger: log.Named("ca"), Registerer: reg})
		if err != nil {
			return "", err
		}
		opts.CA = a
	}
	ln, err := net.Listen("tcp", cpc.Address)
	if err != nil {
		return "", fmt.Errorf("control plane listener: %w", err)
	}
	p.cp = controlplane.New(opts)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := p.cp.Run(ctx, ln); err != nil {
			log.Error("control plane stopped", zap.Error(err))
		}
	}()
	log.Info("listening", zap.String("listener", "control_plane"), zap.String("kind", "xds"), zap.Stringer("address", ln.Addr()))
	return ln.Addr().String(), nil
}

// reload hands the new services to the control plane.
func (p *xdsParts) reload(cfg *config.File) {
	if p != nil && p.cp != nil {
		p.cp.SetServices(cfg.Services)
	}
}

// stop ends the client and the control plane and waits for them.
func (p *xdsParts) stop() {
	if p == nil {
		return
	}
	p.cancel()
	p.wg.Wait()
	if p.store != nil {
		p.store.Close()
	}
}
