package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ewgate/ewgate/gateway"
	"github.com/ewgate/ewgate/gateway/config"
)

func cmdServe(args []string, stdout, stderr io.Writer) int {
	var logFormat string
	path, err := configFlags("serve", args, stdout, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&logFormat, "log-format", "", "json or console (overrides log.format)")
	})
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
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
	if err := serve(cfg, gateway.Options{Path: path, Loaded: raw, Logger: log, Level: &level, Version: versionString(), Revision: revisionString()}); err != nil {
		log.Error("ewgate stopped", zap.Error(err))
		return 1
	}
	return 0
}

// serve runs the gateway until SIGTERM or SIGINT (SIGHUP reloads), then shuts it down; a
// second SIGTERM or SIGINT during the drain closes every connection at once. Signals are taken
// from before the start, so one that arrives while the gateway starts is acted on once it has.
func serve(cfg *config.File, opts gateway.Options) error {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	g, err := gateway.Start(cfg, opts)
	if err != nil {
		return err
	}
	var stop os.Signal
	for stop = range sigs {
		if stop != syscall.SIGHUP {
			break
		}
		g.Reload("SIGHUP")
	}
	opts.Logger.Info("shutdown signal", zap.Stringer("signal", stop))
	ctx, cut := context.WithCancel(context.Background())
	drained := make(chan struct{})
	var w sync.WaitGroup
	w.Go(func() {
		for {
			select {
			case sig := <-sigs:
				if sig == syscall.SIGHUP {
					opts.Logger.Info("SIGHUP ignored: draining (no reloads, nothing cut)")
					continue
				}
				opts.Logger.Warn("second signal: closing every connection now", zap.Stringer("signal", sig))
				cut()
				return
			case <-drained:
				return
			}
		}
	})
	err = g.Shutdown(ctx)
	close(drained)
	w.Wait()
	cut()
	return err
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
