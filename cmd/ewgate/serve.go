package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/dataplane"
)

func cmdServe(args []string, stderr io.Writer) int {
	var logFormat string
	path, err := configFlags("serve", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&logFormat, "log-format", "", "json or console (overrides log.format)")
	})
	if err != nil {
		fmt.Fprintf(stderr, "ewgate serve: %v\n", err)
		return 2
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "ewgate serve: %v\n", err)
		return 1
	}
	cfg, err := config.Parse(raw, path)
	if err != nil {
		fmt.Fprintf(stderr, "ewgate serve: invalid config:\n%v\n", err)
		return 1
	}
	if logFormat != "" {
		cfg.Log.Format = logFormat
	}
	level := zap.NewAtomicLevel()
	log, err := newLogger(cfg.Log, level, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "ewgate serve: %v\n", err)
		return 2
	}
	defer log.Sync()
	s := &server{path: path, log: log, level: level, startHash: sha256.Sum256(raw)}
	s.logWarnings(cfg, "start")
	if err := s.serve(cfg); err != nil {
		log.Error("ewgate stopped", zap.Error(err))
		return 1
	}
	return 0
}

// server is the running process: the gateway, its admin listener and the config it came from.
type server struct {
	path      string
	log       *zap.Logger
	level     zap.AtomicLevel
	gw        *dataplane.Gateway
	cfg       *config.File          // the serving config
	startHash [32]byte              // of the file served at start; the watcher compares with it first
	parts     atomic.Pointer[parts] // set once at start, before any reload; read by admin pages
	health    *controlHealth        // the VM side's readiness (GET /healthz/control)
}

func (s *server) serve(cfg *config.File) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.gw = dataplane.New(dataplane.Options{Logger: s.log, Registerer: reg})
	s.health = newControlHealth(reg)
	s.health.set(func(h *controlHealth) { h.configured.Store(cfg.Control != nil) })

	admin, err := s.startAdmin(cfg, reg)
	if err != nil {
		return err
	}
	if err := s.apply(cfg); err != nil {
		admin.close()
		return err
	}
	p, err := s.startParts(cfg, reg)
	if err != nil {
		s.drain(nil, 0)
		admin.close()
		return err
	}
	s.parts.Store(p)
	s.health.set(func(h *controlHealth) { h.started.Store(true) })
	s.log.Info("ewgate serving", zap.String("version", versionString()), zap.String("config", s.path))

	// One goroutine owns reloads: the signal loop and the file watcher only ask for one.
	ctx, stopReloads := context.WithCancel(context.Background())
	reloads := make(chan string, 1)
	request := func(why string) {
		select {
		case reloads <- why:
		default: // one is pending already; it reads the file as it is when it runs
		}
	}
	var bg sync.WaitGroup
	bg.Go(func() { s.watch(ctx, cfg.Reload.WatchInterval, s.startHash, request) })
	bg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case why := <-reloads:
				s.reload(why)
			}
		}
	})

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	var stop os.Signal
	for stop = range sigs {
		if stop != syscall.SIGHUP {
			break
		}
		request("SIGHUP")
	}
	stopReloads()
	bg.Wait() // s.cfg is the owner's until here
	s.log.Info("shutting down: draining connections", zap.Stringer("signal", stop), zap.Duration("drain_timeout", s.cfg.DrainTimeout))
	s.health.set(func(h *controlHealth) { h.started.Store(false) })
	p.stop() // the routes stay as they are while the connections drain
	s.drain(sigs, s.cfg.DrainTimeout)
	if err := admin.shutdown(); err != nil {
		return err
	}
	s.log.Info("ewgate stopped")
	return nil
}

// adminServers are the admin HTTP servers the config asks for (config.Admin): the debug admin
// with every page, the status server (readiness only) and the metrics server, each behind its
// connection caps.
type adminServers []adminServer

type adminServer struct {
	srv  *http.Server
	done chan error
}

func (s *server) startAdmin(cfg *config.File, reg *prometheus.Registry) (adminServers, error) {
	a := cfg.Admin
	status := s.statusChecks()
	all := s.debugHandlers()
	maps.Copy(all, status)
	servers := []struct {
		name, key, addr string
		h               http.Handler
	}{
		{"admin", "admin.address", a.Address, s.gw.AdminHandler(reg, a.Pprof, all)},
		{"status", "admin.status_address", a.StatusAddress, s.gw.StatusHandler(status)},
		{"metrics", "admin.metrics_address", a.MetricsAddress, dataplane.MetricsHandler(reg)},
	}
	limiter := dataplane.NewAdminLimiter(reg)
	lim := dataplane.AdminLimits{MaxConnections: a.MaxConnections, MaxPerSource: a.MaxConnectionsPerSource}
	var started adminServers
	for _, sv := range servers {
		if sv.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", sv.addr)
		if err != nil {
			started.close()
			return nil, fmt.Errorf("%s listener (%s): %w", sv.name, sv.key, err)
		}
		srv := dataplane.NewAdminServer(sv.h)
		as := adminServer{srv: srv, done: make(chan error, 1)}
		go func() { as.done <- srv.Serve(limiter.Wrap(sv.name, ln, lim)) }()
		started = append(started, as)
		s.log.Info("listening", zap.String("listener", sv.name), zap.String("kind", sv.name), zap.Stringer("address", ln.Addr()),
			zap.Int("max_connections", lim.MaxConnections), zap.Int("max_connections_per_source", lim.MaxPerSource))
	}
	return started, nil
}

func (as adminServers) close() {
	for _, a := range as {
		a.srv.Close()
		<-a.done
	}
}

// shutdown lets each server finish its requests (5 s at most), then closes it.
func (as adminServers) shutdown() error {
	var errs []error
	for _, a := range as {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.srv.Shutdown(ctx); err != nil {
			a.srv.Close()
		}
		cancel()
		if err := <-a.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// logWarnings logs each risky setting the config load found (config.File.Warnings).
func (s *server) logWarnings(cfg *config.File, when string) {
	for _, w := range cfg.Warnings {
		s.log.Warn("config warning", zap.String("when", when), zap.String("file", w.File), zap.Int("line", w.Line),
			zap.String("path", w.Path), zap.String("warning", w.Msg))
	}
}

// drain waits for open connections up to the drain timeout; a second signal cuts them at once.
func (s *server) drain(sigs <-chan os.Signal, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() {
		select {
		case sig := <-sigs:
			s.log.Warn("second signal: closing every connection now", zap.Stringer("signal", sig))
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := s.gw.Shutdown(ctx); err != nil {
		s.log.Warn("drain ended with connections still open; they were closed", zap.Error(err))
	}
}

// apply hands cfg to the gateway and logs where each listener listens.
func (s *server) apply(cfg *config.File) error {
	dp := cfg.DataPlane()
	dp.FDHolders = fileHolders(cfg)
	if err := s.gw.Apply(dp); err != nil {
		return err
	}
	s.cfg = cfg
	if err := s.parts.Load().reload(cfg); err != nil {
		s.log.Error("reload: workload groups not written; the registrar keeps the previous ones and ewgate retries with backoff", zap.Error(err))
	}
	if lvl, err := zapcore.ParseLevel(cfg.Log.Level); err == nil {
		s.level.SetLevel(lvl)
	}
	for _, l := range cfg.Listeners {
		s.log.Info("listening", zap.String("listener", l.Name), zap.String("kind", l.Kind), zap.Stringer("address", s.gw.Addr(l.Name)))
	}
	return nil
}

// reload re-reads the file; a file that does not load is refused and the serving config stays.
func (s *server) reload(why string) {
	raw, err := readSettled(s.path)
	if err == nil {
		var cfg *config.File
		if cfg, err = config.Parse(raw, s.path); err == nil {
			s.logWarnings(cfg, "reload")
			err = s.apply(cfg)
			if err == nil {
				s.log.Info("config reloaded", zap.String("trigger", why), zap.Uint64("snapshot", s.gw.Snapshot().Version))
				return
			}
		} else {
			s.gw.RecordConfigError()
		}
	} else {
		s.gw.RecordConfigError()
	}
	s.log.Error("config reload refused; the previous config keeps serving", zap.String("trigger", why), zap.Error(err))
}

// settleDelay is how far apart readSettled's two reads of the config file are.
const settleDelay = 50 * time.Millisecond

// readSettled reads the file until two reads settleDelay apart agree, at most ten times, so
// that a file caught in the middle of a non-atomic write (an editor's, a script's `cat >`) is
// never applied as the shorter file it is at that moment: a cut that falls between two
// sections still parses, as a config that moves or drops listeners.
func readSettled(path string) ([]byte, error) {
	b, err := settle(func() ([]byte, error) { return os.ReadFile(path) }, func() { time.Sleep(settleDelay) })
	if errors.Is(err, errUnsettled) {
		return nil, fmt.Errorf("%s %w for %s: reload again once it is written", path, err, 10*settleDelay)
	}
	return b, err
}

var errUnsettled = errors.New("kept changing")

// settle calls read until two calls with a pause between them return the same bytes, at most
// ten times.
func settle(read func() ([]byte, error), pause func()) ([]byte, error) {
	prev, err := read()
	for range 10 {
		if err != nil {
			return nil, err
		}
		pause()
		cur, err2 := read()
		if err2 == nil && bytes.Equal(prev, cur) {
			return cur, nil
		}
		prev, err = cur, err2
	}
	if err != nil {
		return nil, err
	}
	return nil, errUnsettled
}

// watch asks for a reload when the file's content changes from what it was at the last look
// (start is the content served at start). Polling survives the symlink swaps of a Kubernetes
// ConfigMap volume, which file-event watchers miss.
func (s *server) watch(ctx context.Context, every time.Duration, start [32]byte, request func(why string)) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	seen := start
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		raw, err := os.ReadFile(s.path)
		if err != nil {
			continue // a ConfigMap swap in progress; the next tick sees the new file
		}
		if h := sha256.Sum256(raw); h != seen {
			seen = h
			request("file changed")
		}
	}
}

func newLogger(l config.Log, level zap.AtomicLevel, out io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(l.Level)
	if err != nil {
		return nil, err
	}
	level.SetLevel(lvl)
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	enc := zapcore.NewJSONEncoder(encCfg)
	if l.Format == config.LogConsole {
		encCfg = zap.NewDevelopmentEncoderConfig()
		enc = zapcore.NewConsoleEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.AddSync(out), level)
	// Warnings repeat under floods (over-limit refusals, accept errors); sample them per second.
	// Access-log lines ("connection", info) are never sampled: one line per connection.
	return zap.New(samplingWarnings(core)), nil
}

// samplingWarnings samples entries at warn and above (100 per message per second, then 1 in 100)
// and passes the rest through.
func samplingWarnings(core zapcore.Core) zapcore.Core {
	sampled := zapcore.NewSamplerWithOptions(core, time.Second, 100, 100)
	return &splitCore{Core: core, warn: sampled}
}

type splitCore struct {
	zapcore.Core
	warn zapcore.Core
}

func (c *splitCore) With(f []zapcore.Field) zapcore.Core {
	return &splitCore{Core: c.Core.With(f), warn: c.warn.With(f)}
}

func (c *splitCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Level >= zapcore.WarnLevel {
		return c.warn.Check(e, ce)
	}
	return c.Core.Check(e, ce)
}
