package vmcontrol

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/internal/logsample"
	"github.com/ewgate/ewgate/registrar"
)

// Registrar is what the front needs of the registrar (*registrar.Registrar implements it).
type Registrar interface {
	Connect(ctx context.Context, req registrar.Request) (*registrar.Session, error)
}

var _ Registrar = (*registrar.Registrar)(nil)

// Options are the front's collaborators.
type Options struct {
	// Verifier checks tokens and client certificates. Required.
	Verifier *authn.Verifier
	// Registrar registers VMs whose ADS node carries AUTO_REGISTER_GROUP, of every cluster, in
	// its one store. If nil (and Registrars is empty), such streams are forwarded unchanged (the
	// upstream istiod registers them).
	Registrar Registrar
	// Registrars, instead of Registrar, are a registrar per cluster, each writing to that
	// cluster's store: a VM is registered by the registrar of its verified cluster, where that
	// cluster's istiod reads its WorkloadEntry. Every call of a VM whose cluster has none is
	// refused (FailedPrecondition) before anything reaches an upstream: its istiod would
	// otherwise register it, or serve it without the entry this gateway is meant to keep.
	Registrars map[string]Registrar
	// Logger gets one line per stream end and the listener's events. If nil, nothing is logged.
	Logger *zap.Logger
	// Registerer receives the ewgate_control_* metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
	// Now is the clock of the failure rate limit. If nil, time.Now.
	Now func() time.Time
}

// RefusalLogBurst is how many lines per second each kind of refusal (an auth failure reason, a
// limit, a handshake failure reason) writes; the rest are counted, and the next line written
// for that kind carries the count as "dropped".
const RefusalLogBurst = 10

// Front is the VM control endpoint. Serve (or Run) it; it is safe for concurrent use.
type Front struct {
	cfg            Config
	opts           Options
	log            *zap.Logger
	m              *metrics
	certs          *certReloader
	builtin        *builtin
	upstreams      map[string]*upstream
	failures       *failureLimiter
	authenticating *authenticating
	limits         *streamLimits
	tracker        *connTracker // set by Serve
	sample         *logsample.Sampler
	expiredTokens  expiredTokenLog

	wg sync.WaitGroup // goroutines that outlive a handler (VM readers)

	lifeMu   sync.Mutex   // guards ln and stopping
	ln       *capListener // the listener Serve serves on; nil before Serve
	stopping bool         // StopAccepting was called
	cut      chan struct{}
	cutOnce  sync.Once
}

// New builds a front from cfg (defaults applied to a copy, then validated). Upstream
// connections are made lazily, on the first stream.
func New(cfg Config, opts Options) (*Front, error) {
	cfg.Upstreams = append([]UpstreamConfig(nil), cfg.Upstreams...)
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("vmcontrol: invalid config: %w", err)
	}
	if opts.Verifier == nil {
		return nil, errors.New("vmcontrol: Options.Verifier is required")
	}
	if opts.Registrar != nil && len(opts.Registrars) > 0 {
		return nil, errors.New("vmcontrol: set Options.Registrar (one for every cluster) or Options.Registrars (one per cluster), not both")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	f := &Front{cfg: cfg, opts: opts, log: opts.Logger, m: m, builtin: newBuiltin(),
		upstreams:      map[string]*upstream{},
		failures:       newFailureLimiter(cfg.AuthFailures, opts.Now),
		authenticating: newAuthenticating(cfg.Limits.MaxAuthenticatingPerSource),
		limits:         newStreamLimits(cfg.Limits.MaxStreams, cfg.Limits.MaxStreamsPerVM),
		sample:         logsample.New(RefusalLogBurst, time.Second, opts.Now),
		cut:            make(chan struct{})}
	if f.certs, err = newCertReloader(cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.CheckInterval, f.log); err != nil {
		return nil, err
	}
	for _, u := range cfg.Upstreams {
		up, err := f.newUpstream(u)
		if err != nil {
			f.closeUpstreams()
			return nil, err
		}
		f.upstreams[u.Cluster] = up
		f.m.dialFailures.WithLabelValues(u.Cluster) // present at zero from the start
	}
	return f, nil
}

// registrarFor returns the registrar of a VM of cluster (nil: the front registers no VM) and
// false when registrars are per cluster and cluster has none.
func (f *Front) registrarFor(cluster string) (Registrar, bool) {
	if len(f.opts.Registrars) == 0 {
		return f.opts.Registrar, true
	}
	r, ok := f.opts.Registrars[cluster]
	return r, ok && r != nil
}

func (f *Front) closeUpstreams() {
	for _, up := range f.upstreams {
		up.close()
	}
}

func (f *Front) tlsConfig() *tls.Config {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: f.certs.get}
	switch f.cfg.TLS.ClientCerts {
	case ClientCertRequest:
		// Verified per RPC by authn against the bundle of the certificate's own trust domain;
		// a bad certificate next to a good token must not fail the handshake.
		tc.ClientAuth = tls.RequestClientCert
	case ClientCertRequire:
		tc.ClientAuth = tls.RequireAndVerifyClientCert
		tc.ClientCAs = f.opts.Verifier.ClientCAs()
	}
	return tc
}

func (f *Front) serverOptions() []grpc.ServerOption {
	l := f.cfg.Limits
	return []grpc.ServerOption{
		grpc.Creds(&calmCreds{TransportCredentials: credentials.NewTLS(f.tlsConfig()),
			onCalm:  f.m.limits.WithLabelValues("keepalive").Inc,
			onReset: f.m.limits.WithLabelValues("header_size").Inc,
			onFail:  f.handshakeFailed}),
		// Request metadata is read, and held, before any handler (authentication included)
		// runs: gRPC's default bound is 16 MiB per request. x/net/http2 stops keeping fields
		// past the bound (the stream is reset) and closes a connection whose HEADERS or
		// CONTINUATION frames run far past it, so nothing beyond the bound is held.
		grpc.MaxHeaderListSize(uint32(l.MaxHeaderBytes)),
		grpc.MaxConcurrentStreams(uint32(l.MaxStreamsPerConnection)),
		grpc.UnknownServiceHandler(f.handle),
		grpc.ForceServerCodecV2(rawCodec{}),
		grpc.MaxRecvMsgSize(l.MaxMessageBytes),
		grpc.MaxSendMsgSize(l.MaxUpstreamMsgSize),
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.KeepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: l.KeepaliveTime, Timeout: l.KeepaliveTimeout}),
		// Static windows: a VM can have at most this much unread data of a stream in ewgate.
		grpc.StaticStreamWindowSize(64 << 10),
		grpc.StaticConnWindowSize(1 << 20),
	}
}

// Run listens on the configured address and serves until ctx ends (see Serve).
func (f *Front) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", f.cfg.Address)
	if err != nil {
		return fmt.Errorf("vmcontrol: %w", err)
	}
	f.log.Info("listening", zap.String("listener", "control"), zap.String("address", ln.Addr().String()))
	return f.Serve(ctx, ln)
}

// Serve serves VMs on ln until ctx ends (or StopAccepting), then stops accepting, lets open
// streams continue for the drain timeout (or until Cut), closes the rest and the upstream
// connections, and returns once every goroutine it started has exited. A Front serves once.
func (f *Front) Serve(ctx context.Context, ln net.Listener) error {
	cl := newCapListener(ln, f)
	f.lifeMu.Lock()
	f.ln = cl
	if f.stopping {
		cl.Close()
	}
	f.lifeMu.Unlock()
	f.tracker = newConnTracker(cl, f.cfg.Limits.IdleTimeout, func() { f.m.limits.WithLabelValues("idle_timeout").Inc() })
	gs := grpc.NewServer(f.serverOptions()...)
	reapDone := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { f.tracker.run(reapDone) })
	serveErr := make(chan error, 1)
	bg.Go(func() { serveErr <- f.stoppedAccepting(gs.Serve(f.tracker)) })
	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		serveErr <- err
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	t := time.NewTimer(f.cfg.DrainTimeout)
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
		<-stopped
	case <-f.cut:
		gs.Stop()
		<-stopped
	}
	t.Stop()
	close(reapDone)
	if e := <-serveErr; err == nil && !errors.Is(e, grpc.ErrServerStopped) {
		err = e
	}
	bg.Wait()
	f.wg.Wait()
	f.closeUpstreams()
	return err
}

// StopAccepting closes the listener Serve serves on (now, or as soon as Serve begins): new
// connections are refused while open streams go on, and Serve begins its drain as when its
// context ends. The gateway calls it when shutting down, before anything drains, so that a
// load balancer's and the VMs' new connections go elsewhere at once.
func (f *Front) StopAccepting() {
	f.lifeMu.Lock()
	defer f.lifeMu.Unlock()
	f.stopping = true
	if f.ln != nil {
		f.ln.Close()
	}
}

// Cut ends Serve's drain at once: the streams still open are closed, as when the drain timeout
// passes. The gateway calls it when its own drain deadline (drain_timeout) comes first.
func (f *Front) Cut() { f.cutOnce.Do(func() { close(f.cut) }) }

// stoppedAccepting turns the error of gRPC's Serve after StopAccepting (the listener closed
// under it) into nil: that is a shutdown, not a failure.
func (f *Front) stoppedAccepting(err error) error {
	f.lifeMu.Lock()
	defer f.lifeMu.Unlock()
	if f.stopping && errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
