package bench

import (
	"bufio"
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
	"syscall"
	"time"
)

// proc is a process the harness started; it is stopped by its PID, never by name.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // its stdout+stderr file in the work directory
	done chan struct{}
	err  error
}

func startProc(name, logFile string, argv ...string) (*proc, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, so a ^C on the terminal reaches the harness, which stops it by PID.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the PID, waits up to 10 s, then SIGKILLs the PID.
func (p *proc) stop() {
	if p == nil || p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// freePort asks the kernel for a free loopback port. Another process could take it before the
// proxy binds; the proxy then fails to start and the harness says so.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitFor polls cond every 20 ms until it holds, the process exits, or the deadline passes.
func waitFor(ctx context.Context, p *proc, what string, limit time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("bench: %s exited before %s: %v\n%s", p.name, what, p.err, p.tail())
		}
		select {
		case <-ctx.Done():
			msg := ""
			if p != nil {
				msg = p.tail()
			}
			return fmt.Errorf("bench: %s: not %s within %s\n%s", nameOf(p), what, limit, msg)
		case <-tick.C:
		}
	}
}

func nameOf(p *proc) string {
	if p == nil {
		return "wait"
	}
	return p.name
}

func canDial(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// children lists the PIDs whose parent is pid (nginx's workers), scanning /proc once.
func children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(n); err == nil && st.ppid == pid {
			out = append(out, n)
		}
	}
	return out
}

type stat struct {
	ppid        int
	utime, stim uint64 // clock ticks
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return stat{}, err
	}
	// The command name is in parentheses and may hold spaces: split after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, errors.New("bench: bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return stat{}, errors.New("bench: short stat")
	}
	var s stat
	s.ppid, _ = strconv.Atoi(f[1])
	s.utime, _ = strconv.ParseUint(f[11], 10, 64)
	s.stim, _ = strconv.ParseUint(f[12], 10, 64)
	return s, nil
}

// clkTck is USER_HZ, 100 on every Linux architecture Go supports here.
const clkTck = 100

// cpuSeconds sums user+system CPU of the processes (all their threads).
func cpuSeconds(pids []int) float64 {
	var t uint64
	for _, p := range pids {
		if s, err := readStat(p); err == nil {
			t += s.utime + s.stim
		}
	}
	return float64(t) / clkTck
}

// rssKiB sums VmRSS of the processes.
func rssKiB(pids []int) int64 {
	var sum int64
	for _, p := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					n, _ := strconv.ParseInt(f[0], 10, 64)
					sum += n
				}
			}
		}
	}
	return sum
}

// fdCount sums the open file descriptors of the processes.
func fdCount(pids []int) int {
	n := 0
	for _, p := range pids {
		ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(p), "fd"))
		if err == nil {
			n += len(ents)
		}
	}
	return n
}

// startPiped starts a process that prints "listening ADDR" as its first stdout line and lives
// as long as its stdin is open.
func startPiped(ctx context.Context, logFile string, argv []string) (*proc, io.WriteCloser, string, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, nil, "", err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		f.Close()
		return nil, nil, "", err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		f.Close()
		return nil, nil, "", err
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, nil, "", fmt.Errorf("bench: start %s: %w", argv[0], err)
	}
	p := &proc{name: "backend", cmd: cmd, log: logFile, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(out)
		line, _ := r.ReadString('\n')
		lines <- line
		io.Copy(f, r)
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case line := <-lines:
		if addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening "); ok {
			return p, in, addr, nil
		}
		in.Close()
		p.stop()
		return nil, nil, "", fmt.Errorf("bench: backend did not start: %q\n%s", line, p.tail())
	case <-t.C:
	case <-ctx.Done():
	}
	in.Close()
	p.stop()
	return nil, nil, "", fmt.Errorf("bench: backend did not report its address")
}

// ctxSwitches sums voluntary and involuntary context switches over every thread of the
// processes (/proc/<pid>/task/*/status). Threads that exit in between drop out of the sum;
// the proxies here keep theirs.
func ctxSwitches(pids []int) int64 {
	var sum int64
	for _, p := range pids {
		tasks, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(p), "task"))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "task", t.Name(), "status"))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
					n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
					sum += n
				}
			}
		}
	}
	return sum
}
