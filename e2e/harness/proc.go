package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ProcSpec describes a peer process.
type ProcSpec struct {
	Name string   // short name used in logs and file names
	Path string   // the binary
	Args []string // its arguments
	// Env is the whole environment besides PATH and HOME (HOME is Dir): peers do not inherit the
	// test's environment, so a stray KUBECONFIG or GRPC_XDS_BOOTSTRAP cannot leak into them.
	Env []string
	// Dir is the working directory, created if missing and removed by Stop. If empty, a new
	// directory under the harness temp root is used.
	Dir string
	// Binds, if any, run the peer in a private mount namespace with each bind mount in place
	// (see namespaces.go); the machine's mounts are not touched.
	Binds []Bind
	// Hostname, if set, runs the peer in a UTS namespace of its own with this host name, as a
	// pod's container sees its pod name.
	Hostname string
	// PrivateNet runs the peer in a network namespace of its own with only lo (up), as a pod
	// has its own; OpenNetNS reaches into it.
	PrivateNet bool
	// NetNSPath, if set, runs the peer in that existing network namespace (e.g.
	// "/proc/<pid>/ns/net" of a Network), as a pod joins its node's network. Not with PrivateNet.
	NetNSPath string
}

// Proc is a running peer: its own process group, its output in a log file in its directory.
type Proc struct {
	Name    string
	Dir     string // working directory, removed by Stop
	LogPath string // stdout and stderr

	cmd      *exec.Cmd
	log      *os.File
	done     chan struct{}
	waitErr  error
	stopOnce sync.Once
	stopErr  error

	mu    sync.Mutex
	saved []byte // the end of the log, kept when Stop removes the directory
}

var (
	liveMu sync.Mutex
	live   = map[*Proc]struct{}{}
)

// StartProc starts a peer in its own process group. The child also gets SIGKILL if the test
// process dies (Pdeathsig), so a peer does not outlive a test binary killed by its -timeout.
func StartProc(spec ProcSpec) (*Proc, error) {
	dir := spec.Dir
	if dir == "" {
		d, err := os.MkdirTemp(TempRoot(), spec.Name+"-")
		if err != nil {
			return nil, fmt.Errorf("harness: %s: %w", spec.Name, err)
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("harness: %s: %w", spec.Name, err)
	}
	logPath := filepath.Join(dir, spec.Name+".log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("harness: %s: %w", spec.Name, err)
	}
	path, args, env := spec.Path, spec.Args, spec.Env
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if flags, ok := needsNamespaces(spec); ok {
		if path, args, env, err = nsCommand(spec); err != nil {
			log.Close()
			return nil, fmt.Errorf("harness: %s: %w", spec.Name, err)
		}
		attr.Unshareflags = flags
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, env...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("harness: start %s: %w", spec.Name, err)
	}
	p := &Proc{Name: spec.Name, Dir: dir, LogPath: logPath, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	liveMu.Lock()
	live[p] = struct{}{}
	liveMu.Unlock()
	return p, nil
}

// PID is the process id (and process group id) of the peer.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// ExitErr is the result of the process once Exited is closed.
func (p *Proc) ExitErr() error {
	select {
	case <-p.done:
		return p.waitErr
	default:
		return nil
	}
}

// Signal sends sig to the peer's process group.
func (p *Proc) Signal(sig syscall.Signal) error {
	return syscall.Kill(-p.PID(), sig)
}

// Stop sends SIGTERM to the process group, SIGKILL after grace, waits for the exit and removes
// the working directory. It is safe to call more than once.
func (p *Proc) Stop(grace time.Duration) error {
	p.stopOnce.Do(func() {
		p.stopErr = p.stop(grace)
		liveMu.Lock()
		delete(live, p)
		liveMu.Unlock()
	})
	return p.stopErr
}

func (p *Proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
	default:
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.Signal(syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("harness: %s (pid %d) did not exit after SIGKILL", p.Name, p.PID())
			}
		}
	}
	// No group kill after the leader is reaped: its pid (the group id) may be reused. The peers
	// run no children of their own; SIGTERM/SIGKILL above went to the whole group while it lived.
	p.log.Close()
	if keepDirs() {
		return nil
	}
	// Keep the end of the log for failure reports after the directory is gone.
	b, _ := os.ReadFile(p.LogPath)
	if len(b) > savedMax {
		b = b[len(b)-savedMax:]
	}
	p.mu.Lock()
	p.saved = b
	p.mu.Unlock()
	return os.RemoveAll(p.Dir)
}

// StopAll stops every peer still running, newest first is not guaranteed: callers that care about
// order (apiserver before etcd) stop those explicitly first. Used on signals and in TestMain.
func StopAll() {
	liveMu.Lock()
	ps := make([]*Proc, 0, len(live))
	for p := range live {
		ps = append(ps, p)
	}
	liveMu.Unlock()
	for _, p := range ps {
		_ = p.Stop(5 * time.Second)
	}
}

// savedMax bounds the log kept in memory after Stop.
const savedMax = 256 << 10

// Log returns everything the peer wrote so far (after Stop: the last 256 KiB).
func (p *Proc) Log() string {
	p.mu.Lock()
	saved := p.saved
	p.mu.Unlock()
	if saved != nil {
		return string(saved)
	}
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// LogSize is the current size of the log, for LogSince.
func (p *Proc) LogSize() int64 {
	st, err := os.Stat(p.LogPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// LogSince returns what the peer wrote after offset (after Stop: at most what Log keeps).
func (p *Proc) LogSince(offset int64) string {
	p.mu.Lock()
	saved := p.saved
	p.mu.Unlock()
	if saved != nil {
		return tailLines(string(saved), 1<<20)
	}
	f, err := os.Open(p.LogPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Tail returns the last n lines of the log.
func (p *Proc) Tail(n int) string { return tailLines(p.Log(), n) }

func tailLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitLog waits until the log contains substr, the process exits, or ctx ends.
func (p *Proc) WaitLog(ctx context.Context, substr string) error {
	return p.WaitFor(ctx, 100*time.Millisecond, func() error {
		if strings.Contains(p.Log(), substr) {
			return nil
		}
		return fmt.Errorf("no %q in the log yet", substr)
	})
}

// ErrExited is returned by WaitFor when the peer exits before the condition holds.
var ErrExited = errors.New("harness: peer exited")

// WaitFor polls cond every interval until it returns nil, the peer exits, or ctx ends. The error
// names the last failure of cond and carries the log tail when the peer died.
func (p *Proc) WaitFor(ctx context.Context, interval time.Duration, cond func() error) error {
	last := Poll(ctx, interval, func() (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("%w: %s: %v\n%s", ErrExited, p.Name, p.waitErr, p.Tail(30))
		default:
		}
		if err := cond(); err != nil {
			return false, err
		}
		return true, nil
	})
	if last != nil {
		return fmt.Errorf("harness: %s: %w", p.Name, last)
	}
	return nil
}

// Poll calls cond every interval until it reports done, returns an error wrapping ErrExited, or
// ctx ends; it returns nil when done, else the last error (or ctx's error).
func Poll(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		done, err := cond()
		if done {
			return nil
		}
		if errors.Is(err, ErrExited) {
			return err
		}
		last = err
		select {
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// LogOnFailure prints, when t fails, what each peer wrote while t ran (at most the last lines).
// Use it for the shared peers in tests; per-test peers started with the harness do it themselves.
func LogOnFailure(t testing.TB, procs ...*Proc) {
	t.Helper()
	offsets := make([]int64, len(procs))
	for i, p := range procs {
		if p != nil {
			offsets[i] = p.LogSize()
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for i, p := range procs {
			if p == nil {
				continue
			}
			t.Logf("---- %s log during %s (last %d lines) ----\n%s", p.Name, t.Name(), tailN,
				tailLines(p.LogSince(offsets[i]), tailN))
		}
	})
}

const tailN = 60

// StopOnCleanup stops p when t ends, printing its log tail first if t failed.
func StopOnCleanup(t testing.TB, p *Proc) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- %s log (last %d lines) ----\n%s", p.Name, tailN, p.Tail(tailN))
		}
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("stop %s: %v", p.Name, err)
		}
	})
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. Another process can take
// it before the peer binds it; the Start functions retry with new ports when a peer exits early.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("harness: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freeAddrs returns n distinct "127.0.0.1:<port>" addresses.
func freeAddrs(n int) ([]string, error) {
	seen := map[int]bool{}
	var out []string
	for i := 0; len(out) < n && i < 10*n; i++ {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, "127.0.0.1:"+strconv.Itoa(p))
	}
	if len(out) < n {
		return nil, fmt.Errorf("harness: could not find %d free ports", n)
	}
	return out, nil
}

var (
	tempRootOnce sync.Once
	tempRoot     string
)

// TempRoot is the directory under which the harness puts every peer's files for this test
// process; RemoveTempRoot deletes it.
func TempRoot() string {
	tempRootOnce.Do(func() {
		// Short paths: unix sockets of pilot-agent live below it (108-byte limit).
		d, err := os.MkdirTemp("", tempPrefix)
		if err != nil {
			panic(fmt.Sprintf("harness: temp root: %v", err))
		}
		// The owner's pid lets a later run remove this root if this process dies without
		// cleaning up (a panic or `go test -timeout`; its peers die with it by Pdeathsig).
		_ = os.WriteFile(filepath.Join(d, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		tempRoot = d
	})
	return tempRoot
}

const tempPrefix = "ewe2e-"

// RemoveStaleTempRoots removes the temp roots of earlier test processes that died without
// cleaning up: those whose owner.pid names a process that no longer exists.
func RemoveStaleTempRoots() {
	roots, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, r := range roots {
		b, err := os.ReadFile(filepath.Join(r, "owner.pid"))
		if err != nil {
			continue // not ours, or being created right now
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(r)
		}
	}
}

// RemoveTempRoot removes TempRoot unless EWGATE_E2E_KEEP is set.
func RemoveTempRoot() {
	if tempRoot == "" || keepDirs() {
		return
	}
	_ = os.RemoveAll(tempRoot)
}

// keepDirs: EWGATE_E2E_KEEP=1 keeps the peers' directories and logs for a post-mortem.
func keepDirs() bool { return os.Getenv("EWGATE_E2E_KEEP") != "" }

// runCmd runs a short-lived command and returns its combined output.
func runCmd(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, out.String())
	}
	return out.Bytes(), nil
}
