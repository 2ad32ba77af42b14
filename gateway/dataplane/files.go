package dataplane

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"syscall"

	"go.uber.org/zap"
)

// FDHolder is a part of the process that may hold open files, with the most it may hold: a
// listener's connections, the VM control endpoint's, an admin server's. The budget check adds
// them up against the open-file limit so that no holder's flood can take another's files.
type FDHolder struct {
	Name string // as the error names it: "listener mesh", "control endpoint (15012)"
	FDs  int
}

// FDReserve is the part of the open-file limit kept for files no connection cap bounds:
// listening sockets, the relay engine's epoll and event descriptors and pooled pipes, the
// connections to xDS and the API server, store and log files, DNS lookups, and slack.
const FDReserve = 256

// Files a proxied connection holds: its two sockets on the epoll relay engine (pipes only while
// bytes are in flight, counted in the reserve), two sockets and two splice pipes on goroutines.
const (
	FilesPerConnEpoll      = 2
	FilesPerConnGoroutines = 6
)

// minDerivedConnections is the smallest share a listener that leaves max_connections unset may
// get; less means the limit is too low to serve and the config is refused.
const minDerivedConnections = 16

// ErrFileBudget is wrapped by the error of a config whose connection caps do not fit in the
// process's open-file limit.
var ErrFileBudget = errors.New("dataplane: the connection caps do not fit in the open-file limit")

// CheckFDBudget returns nil when the holders and FDReserve fit in limit, and otherwise an error
// (wrapping ErrFileBudget) naming every holder's share, the total and the limit, and what to
// change. It is the whole start-up and reload check; PlanFiles calls it with the listeners and
// the holders given to it.
func CheckFDBudget(limit uint64, holders []FDHolder) error {
	total := FDReserve
	for _, h := range holders {
		total += h.FDs
	}
	if uint64(total) <= limit {
		return nil
	}
	return fmt.Errorf("%w: %s = %d files, limit %d: raise the open-file limit to at least %d "+
		"(LimitNOFILE= in the systemd unit, the container runtime's nofile limit) or lower max_connections",
		ErrFileBudget, describe(holders), total, limit, total)
}

func describe(holders []FDHolder) string {
	var b strings.Builder
	for _, h := range holders {
		fmt.Fprintf(&b, "%s %d + ", h.Name, h.FDs)
	}
	fmt.Fprintf(&b, "reserve %d", FDReserve)
	return b.String()
}

// PlanFiles resolves the connection caps of listeners against the open-file limit and returns
// them (a copy: listeners is not changed) with the budget's holders, one per listener. A
// listener that sets max_connections keeps it; one that leaves it 0 gets an equal share of what
// limit leaves after FDReserve, others and the listeners that set theirs, at most
// DefaultMaxConnections. max_connections_per_source left 0 becomes max_connections /
// DefaultSourceShare, but at least MinSourceDefault (or max_connections when that
// is less), and is never more than max_connections.
//
// It refuses (an error wrapping ErrFileBudget) when the caps set in the file, with others and
// the reserve, exceed limit, or when a derived share would be under 16 connections: an operator
// who sets a cap expects it, not a quiet reduction.
func PlanFiles(listeners []Listener, limit uint64, filesPerConn int, others []FDHolder) ([]Listener, []FDHolder, error) {
	out := append([]Listener(nil), listeners...)
	limit = min(limit, math.MaxInt32)
	used := FDReserve
	for _, h := range others {
		used += h.FDs
	}
	derived := 0
	for _, l := range out {
		if l.MaxConnections > 0 {
			used += l.MaxConnections * filesPerConn
		} else {
			derived++
		}
	}
	if derived > 0 {
		share := 0
		if left := int(limit) - used; left > 0 {
			share = min(left/(derived*filesPerConn), DefaultMaxConnections)
		}
		if share < minDerivedConnections {
			return nil, nil, fmt.Errorf("%w: %d files left after the listeners that set max_connections and the other holders (%s) "+
				"give %d listeners that leave it unset %d connections each at %d files per connection, under %d: "+
				"raise the open-file limit (LimitNOFILE= in the systemd unit, the container runtime's nofile limit) or lower max_connections",
				ErrFileBudget, max(int(limit)-used, 0), describe(others), derived, share, filesPerConn, minDerivedConnections)
		}
		for i := range out {
			if out[i].MaxConnections == 0 {
				out[i].MaxConnections = share
			}
		}
	}
	holders := make([]FDHolder, 0, len(out)+len(others))
	for i := range out {
		l := &out[i]
		if l.MaxConnectionsPerSource == 0 {
			l.MaxConnectionsPerSource = max(l.MaxConnections/DefaultSourceShare, min(l.MaxConnections, MinSourceDefault))
		}
		l.MaxConnectionsPerSource = min(l.MaxConnectionsPerSource, l.MaxConnections)
		holders = append(holders, FDHolder{
			Name: fmt.Sprintf("listener %s (%d connections x %d)", l.Name, l.MaxConnections, filesPerConn),
			FDs:  l.MaxConnections * filesPerConn,
		})
	}
	holders = append(holders, others...)
	if err := CheckFDBudget(limit, holders); err != nil {
		return nil, nil, err
	}
	return out, holders, nil
}

// OpenFileLimit is the process's soft open-file limit (Go raises it to the hard limit at start).
func OpenFileLimit() (soft, hard uint64, err error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, fmt.Errorf("dataplane: reading the open-file limit: %w", err)
	}
	return rl.Cur, rl.Max, nil
}

// filesPerConn is what a proxied connection holds on the relay path in use.
func (g *Gateway) filesPerConn() int {
	if g.epoll.Load() != nil {
		return FilesPerConnEpoll
	}
	return FilesPerConnGoroutines
}

// planFilesLocked resolves f's connection caps against the open-file limit and the holders of
// Config.FDHolders, and returns the config to serve: f itself is not changed. g.mu is held.
func (g *Gateway) planFilesLocked(f *Config) (*Config, error) {
	soft, _, err := OpenFileLimit()
	if err != nil {
		return nil, err
	}
	ls, holders, err := PlanFiles(f.Listeners, soft, g.filesPerConn(), f.FDHolders)
	if err != nil {
		return nil, err
	}
	total := FDReserve
	for _, h := range holders {
		total += h.FDs
	}
	g.log.Info("open-file budget", zap.Uint64("limit", soft), zap.Int("budgeted", total),
		zap.Int("files_per_connection", g.filesPerConn()), zap.String("holders", describe(holders)))
	planned := *f
	planned.Listeners = ls
	return &planned, nil
}
