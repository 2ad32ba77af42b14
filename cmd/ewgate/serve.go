package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ewgate/ewgate/gateway"
	"github.com/ewgate/ewgate/gateway/config"
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
	s := &server{path: path, log: log, level: level, lastHash: sha256.Sum256(raw)}
	if err := s.serve(cfg); err != nil {
		log.Error("ewgate stopped", zap.Error(err))
		return 1
	}
	return 0
}

// server is the running process: the gateway, its admin listener and the config it came from.
type server struct {
	path     string
	log      *zap.Logger
	level    zap.AtomicLevel
	gw       *gateway.Gateway
	cfg      *config.File // the serving config
	lastHash [32]byte
	parts    *parts // set once at start, before any reload
}

func (s *server) serve(cfg *config.File) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.gw = gateway.New(gateway.Options{Logger: s.log, Registerer: reg})

	adminLn, err := net.Listen("tcp", cfg.Admin.Address)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	admin := gateway.NewAdminServer(s.gw.AdminHandler(reg, config.BoolOr(cfg.Admin.Pprof, true), s.debugHandlers()))
	adminDone := make(chan error, 1)
	go func() { adminDone <- admin.Serve(adminLn) }()
	s.log.Info("listening", zap.String("listener", "admin"), zap.String("kind", "admin"), zap.Stringer("address", adminLn.Addr()))

	if err := s.apply(cfg); err != nil {
		admin.Close()
		<-adminDone
		return err
	}
	if s.parts, err = s.startParts(cfg, reg); err != nil {
		s.drain(nil, 0)
		admin.Close()
		<-adminDone
		return err
	}
	s.log.Info("ewgate serving", zap.String("version", versionString()), zap.String("config", s.path))

	ctx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); s.watch(ctx, cfg.Reload.WatchInterval) }()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			s.reload("SIGHUP")
			continue
		}
		s.log.Info("shutting down: draining connections", zap.Stringer("signal", sig), zap.Duration("drain_timeout", s.cfg.DrainTimeout))
		break
	}
	stopWatch()
	<-watchDone
	s.parts.stop() // the routes stay as they are while the connections drain
	s.drain(sigs, s.cfg.DrainTimeout)
	shutdownAdmin(admin)
	if err := <-adminDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	s.log.Info("ewgate stopped")
	return nil
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

func shutdownAdmin(admin *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.Shutdown(ctx); err != nil {
		admin.Close()
	}
}

// apply hands cfg to the gateway and logs where each listener listens.
func (s *server) apply(cfg *config.File) error {
	if err := s.gw.Apply(cfg); err != nil {
		return err
	}
	s.cfg = cfg
	if err := s.parts.reload(cfg); err != nil {
		s.log.Error("reload: workload groups not written; the registrar keeps the previous ones", zap.Error(err))
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
	raw, err := os.ReadFile(s.path)
	if err == nil {
		s.lastHash = sha256.Sum256(raw)
		var cfg *config.File
		if cfg, err = config.Parse(raw, s.path); err == nil {
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

// watch reloads when the file's content changes (polling survives the symlink swaps of a
// Kubernetes ConfigMap volume, which file-event watchers miss).
func (s *server) watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
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
		if h := sha256.Sum256(raw); !bytes.Equal(h[:], s.lastHash[:]) {
			s.reload("file changed")
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
