package dataplane

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/splice"
)

// startEngineLocked starts the relay engine the first config asks for; later configs cannot
// change it (a change is logged, and the running engine keeps relaying). g.mu is held.
func (g *Gateway) startEngineLocked(cfg Relay) error {
	if g.relayCfg != nil {
		if *g.relayCfg != cfg {
			g.log.Warn("relay settings changed; they take effect at the next restart",
				zap.String("engine", g.relayCfg.Engine), zap.String("wanted_engine", cfg.Engine))
		}
		return nil
	}
	if cfg.Engine != RelayGoroutines {
		e, err := splice.New(splice.Options{Loops: cfg.Loops, PipeSize: cfg.PipeSize})
		switch {
		case err == nil:
			g.epoll.Store(e)
		case cfg.Engine == RelayEpoll:
			return fmt.Errorf("dataplane: relay.engine epoll: %w (use auto or goroutines)", err)
		case !errors.Is(err, splice.ErrUnsupported):
			g.log.Warn("relay engine could not start; relaying with goroutines", zap.Error(err))
		}
	}
	g.relayCfg = &cfg
	g.reportFileLimit()
	return nil
}

// registerEngineMetrics exports the relay engine's gauges (zero while it is off).
func (g *Gateway) registerEngineMetrics(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	stat := func(f func(splice.Stats) int64) func() float64 {
		return func() float64 {
			if e := g.epoll.Load(); e != nil {
				return float64(f(e.Stats()))
			}
			return 0
		}
	}
	pipes := func(state string, f func(splice.Stats) int64) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ewgate_relay_engine_pipes",
			Help:        "Splice pipes of the epoll relay engine: in_use hold bytes in flight, pooled are drained and kept for reuse.",
			ConstLabels: prometheus.Labels{"state": state}}, stat(f))
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ewgate_relay_engine_pairs",
			Help: "Connections the epoll relay engine is relaying now."},
			stat(func(s splice.Stats) int64 { return s.Pairs })),
		pipes("in_use", func(s splice.Stats) int64 { return s.PipesInUse }),
		pipes("pooled", func(s splice.Stats) int64 { return s.PipesPooled }),
	)
}

// relayMode names the relay path in use, for logs.
func (g *Gateway) relayMode() string {
	if g.epoll.Load() != nil {
		return RelayEpoll
	}
	return RelayGoroutines
}

// engine returns the relay engine in use: the epoll engine when it runs, else the copy engine.
func (g *Gateway) engine() relayEngine {
	if e := g.epoll.Load(); e != nil {
		return epollEngine{e}
	}
	return copyEngine{}
}

// epollEngine relays on package splice's event loops the pairs accepted and dialled on them.
type epollEngine struct{ e *splice.Engine }

func (e epollEngine) relay(c *conn) error { return e.start(c, false) }

// start hands the pair to its loop: from the connection's goroutine, or, onLoop, from the
// loop's own (the fast path), where relaying starts before start returns.
func (e epollEngine) start(c *conn, onLoop bool) error {
	client, ok1 := c.client.(*splice.Conn)
	up, ok2 := c.upstream.(*splice.Conn)
	if !ok1 || !ok2 {
		return errNotOnEngine
	}
	hand := e.e.Splice
	if onLoop {
		hand = e.e.SpliceOnLoop
	}
	p, err := hand(client, up, c.table.Listener.IdleTimeout, func(r splice.Result) {
		c.relayEnded(r.Reason, r.Up, r.Down, r.Err, r.ClientEOF)
		c.done()
	})
	if err != nil {
		return err
	}
	c.setRelay(p)
	// The loop has the sockets now: their Conns are not needed any more, and an idle pair keeps
	// two of them and their wake-up channels less (about 450 bytes).
	c.mu.Lock()
	c.client, c.upstream = nil, nil
	c.mu.Unlock()
	return nil
}

// reportFileLimit logs and exports the open-file limit: a proxied connection holds 2 files with
// the epoll engine (its sockets; pipes only while bytes are in flight) and 6 with goroutines
// (two sockets and two splice pipes for its whole life), so the limit caps the connections.
func (g *Gateway) reportFileLimit() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	per := uint64(6)
	if g.epoll.Load() != nil {
		per = 2
	}
	g.m.openFilesLimit.Set(float64(rl.Cur))
	g.log.Info("relay engine and open-file limit", zap.String("relay", g.relayMode()),
		zap.Uint64("soft", rl.Cur), zap.Uint64("hard", rl.Max), zap.Uint64("max_proxied_connections", rl.Cur/per))
}
