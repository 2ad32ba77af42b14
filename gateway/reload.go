package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/dataplane"
)

// One goroutine owns reloads (ownReloads): SIGHUP (through Reload) and the file watcher only
// ask for one, so two reloads never run at once and the serving config is written by one
// goroutine only.

// ownReloads runs the reloads asked for until ctx ends.
func (g *Gateway) ownReloads(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case why := <-g.reloads:
			g.reload(why)
		}
	}
}

// apply hands cfg to the data plane and the components and logs where each listener listens.
func (g *Gateway) apply(cfg *config.File) error {
	dp := cfg.DataPlane()
	dp.FDHolders = fileHolders(cfg)
	if err := g.dp.Apply(dp); err != nil {
		return err
	}
	g.cfg = cfg
	if err := g.components.reload(cfg); err != nil {
		g.log.Error("reload: workload groups not written; the registrar keeps the previous ones and ewgate retries with backoff", zap.Error(err))
	}
	if lvl, err := zapcore.ParseLevel(cfg.Log.Level); err == nil && g.opts.Level != nil {
		g.opts.Level.SetLevel(lvl)
	}
	for _, l := range cfg.Listeners {
		g.log.Info("listening", zap.String("listener", l.Name), zap.String("kind", l.Kind), zap.Stringer("address", g.dp.Addr(l.Name)))
	}
	return nil
}

// reload re-reads the file; a file that does not load is refused and the serving config stays.
func (g *Gateway) reload(why string) {
	raw, err := readSettled(g.opts.Path)
	if err == nil {
		var cfg *config.File
		if cfg, err = config.Parse(raw, g.opts.Path); err == nil {
			g.logWarnings(cfg, "reload")
			err = g.apply(cfg)
			if err == nil {
				if keys := restartKeys(g.started, cfg); len(keys) > 0 {
					// Applied, except these: the components they configure keep what they
					// started with. Said and counted, never silently kept.
					g.dp.RecordRestartRequired()
					g.log.Warn("config reloaded; restart to apply", zap.String("trigger", why),
						zap.Uint64("snapshot", g.dp.Snapshot().Version), zap.Strings("keys", keys))
					return
				}
				g.log.Info("config reloaded", zap.String("trigger", why), zap.Uint64("snapshot", g.dp.Snapshot().Version))
				return
			}
			if errors.Is(err, dataplane.ErrShutdown) {
				g.log.Info("config reload skipped: shutting down", zap.String("trigger", why))
				return
			}
		} else {
			g.dp.RecordConfigError()
		}
	} else {
		g.dp.RecordConfigError()
	}
	g.log.Error("config reload refused; the previous config keeps serving", zap.String("trigger", why), zap.Error(err))
}

// logWarnings logs each risky setting the config load found (config.File.Warnings).
func (g *Gateway) logWarnings(cfg *config.File, when string) {
	for _, w := range cfg.Warnings {
		g.log.Warn("config warning", zap.String("when", when), zap.String("file", w.File), zap.Int("line", w.Line),
			zap.String("path", w.Path), zap.String("warning", w.Msg))
	}
}

// settleDelay is how far apart readSettled's two reads of the config file are.
const settleDelay = 50 * time.Millisecond

// readSettled reads the file until two reads settleDelay apart agree, at most ten times, so
// that a file caught in the middle of a non-atomic write (an editor's, a script's `cat >`) is
// never applied as the shorter file it is at that moment: a cut that falls between two
// sections still parses, as a config that moves or drops listeners.
func readSettled(path string) ([]byte, error) {
	b, err := settle(func() ([]byte, error) { return os.ReadFile(path) }, func() { time.Sleep(settleDelay) })
	switch {
	case errors.Is(err, errUnsettled):
		return nil, fmt.Errorf("%s %w for %s: reload again once it is written", path, err, 10*settleDelay)
	case errors.Is(err, errEmpty):
		return nil, fmt.Errorf("%s %w for %s: a config file is replaced whole, never emptied; reload again once it is written", path, err, 10*settleDelay)
	}
	return b, err
}

var (
	errUnsettled = errors.New("kept changing")
	errEmpty     = errors.New("stayed empty")
)

// settle calls read until two calls with a pause between them return the same bytes, at most
// ten times. An empty read never settles: it is a file caught between its truncation and its
// write (an editor or os.WriteFile rewriting it in place), and read at the rhythm of such
// rewrites two empty reads agree. Applied, it would be a valid config with none of the
// listeners, and every listener would close.
func settle(read func() ([]byte, error), pause func()) ([]byte, error) {
	prev, err := read()
	for range 10 {
		if err != nil {
			return nil, err
		}
		pause()
		cur, err2 := read()
		if err2 == nil && len(cur) > 0 && bytes.Equal(prev, cur) {
			return cur, nil
		}
		prev, err = cur, err2
	}
	switch {
	case err != nil:
		return nil, err
	case len(prev) == 0:
		return nil, errEmpty
	}
	return nil, errUnsettled
}

// watch asks for a reload when the file's content changes from what it was at the last look
// (loaded: the content served at start; nil: unknown, the first look reloads). Polling
// survives the symlink swaps of a Kubernetes ConfigMap volume, which file-event watchers miss.
func (g *Gateway) watch(ctx context.Context, every time.Duration, loaded *[32]byte) {
	if every <= 0 || g.opts.Path == "" {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var seen [32]byte
	known := loaded != nil
	if known {
		seen = *loaded
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		raw, err := os.ReadFile(g.opts.Path)
		if err != nil {
			continue // a ConfigMap swap in progress; the next tick sees the new file
		}
		if h := sha256.Sum256(raw); !known || h != seen {
			seen, known = h, true
			g.Reload("file changed")
		}
	}
}
