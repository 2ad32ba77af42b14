package harness

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Stop ends the whole process group (a child of the peer too), removes the peer's directory and
// keeps its log readable.
func TestProcStopKillsGroupAndKeepsLog(t *testing.T) {
	p, err := StartProc(ProcSpec{Name: "sh", Path: "/bin/sh", Args: []string{"-c", "sleep 60 & echo child=$!; wait"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitLog(ctx, "child="); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`child=(\d+)`).FindStringSubmatch(p.Log())
	child, _ := strconv.Atoi(m[1])
	if err := syscall.Kill(child, 0); err != nil {
		t.Fatalf("child %d not running: %v", child, err)
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The child was reparented when sh died; it must be gone or a zombie about to be reaped.
	err = Poll(ctx, 20*time.Millisecond, func() (bool, error) {
		if err := syscall.Kill(child, 0); errors.Is(err, syscall.ESRCH) {
			return true, nil
		}
		st, _ := os.ReadFile("/proc/" + strconv.Itoa(child) + "/stat")
		if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
			return true, nil
		}
		return false, errors.New("child still alive")
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dir %s not removed: %v", p.Dir, err)
	}
	if !strings.Contains(p.Log(), "child=") {
		t.Fatalf("log lost after Stop: %q", p.Log())
	}
	if err := p.Stop(time.Second); err != nil { // idempotent
		t.Fatal(err)
	}
}

// A peer that dies makes WaitFor fail at once with ErrExited and the log tail, not at the deadline.
func TestWaitForReportsExit(t *testing.T) {
	p, err := StartProc(ProcSpec{Name: "dies", Path: "/bin/sh", Args: []string{"-c", "echo cannot bind; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err = p.WaitFor(ctx, 50*time.Millisecond, func() error { return errors.New("never ready") })
	if !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("err = %v, want ErrExited with the log tail", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s: the exit was not noticed", d)
	}
}

// Peers get only PATH, HOME (their own directory) and what the spec says.
func TestProcEnvironmentIsolated(t *testing.T) {
	t.Setenv("KUBECONFIG", "/should/not/leak")
	p, err := StartProc(ProcSpec{Name: "env", Path: "/usr/bin/env", Env: []string{"A=1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("env did not exit")
	}
	got := p.Log()
	if strings.Contains(got, "KUBECONFIG") || !strings.Contains(got, "A=1") || !strings.Contains(got, "HOME="+p.Dir) {
		t.Fatalf("environment:\n%s", got)
	}
}
