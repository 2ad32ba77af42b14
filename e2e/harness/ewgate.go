package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	ewgateOnce sync.Once
	ewgateBin  string
	ewgateErr  error
)

// EwgateBinary builds ewgate from the main module (the repository root, the parent of this
// module) once per test process, as `make build` would, and returns the binary's path.
func EwgateBinary(t testing.TB) string {
	t.Helper()
	ewgateOnce.Do(func() {
		dir := filepath.Join(TempRoot(), "ewgate-bin")
		if ewgateErr = os.MkdirAll(dir, 0o755); ewgateErr != nil {
			return
		}
		ewgateBin = filepath.Join(dir, "ewgate")
		var gomod []byte
		if gomod, ewgateErr = exec.Command("go", "env", "GOMOD").Output(); ewgateErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", ewgateBin, "./cmd/ewgate")
		cmd.Dir = filepath.Dir(filepath.Dir(strings.TrimSpace(string(gomod)))) // e2e/go.mod -> the repository
		if out, err := cmd.CombinedOutput(); err != nil {
			ewgateErr = fmt.Errorf("building ewgate: %v\n%s", err, out)
		}
	})
	if ewgateErr != nil {
		t.Fatal(ewgateErr)
	}
	return ewgateBin
}

// Ewgate is a running `ewgate serve`.
type Ewgate struct {
	Proc  *Proc
	Admin string // http://host:port of the admin listener
}

// StartEwgate writes config (YAML) into a new directory, starts `ewgate serve` on it and waits
// until its admin listener answers (readiness is the caller's to wait for: it may depend on a
// control plane). The process is stopped when the test ends (its log tail printed if the test
// failed).
func StartEwgate(t testing.TB, adminAddr, config string) *Ewgate {
	t.Helper()
	bin := EwgateBinary(t)
	dir := filepath.Join(TempRoot(), fmt.Sprintf("ewgate-%d", time.Now().UnixNano()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := StartProc(ProcSpec{Name: "ewgate", Path: bin, Args: []string{"serve", "--config", path}, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	StopOnCleanup(t, p)
	e := &Ewgate{Proc: p, Admin: "http://" + adminAddr}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitFor(ctx, 20*time.Millisecond, func() error {
		_, err := e.Get(ctx, "/metrics")
		return err
	}); err != nil {
		t.Fatalf("ewgate admin %s: %v\n%s", adminAddr, err, p.Tail(40))
	}
	return e
}

// Get fetches an admin path and returns the body; a status other than 200 is an error.
func (e *Ewgate) Get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.Admin+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// WaitRoutes waits until /debug/routes satisfies cond.
func (e *Ewgate) WaitRoutes(ctx context.Context, what string, cond func(routes string) bool) error {
	var last string
	err := e.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		body, err := e.Get(ctx, "/debug/routes")
		if err != nil {
			return err
		}
		last = body
		if !cond(body) {
			return fmt.Errorf("not yet: %s", what)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w\nlast /debug/routes:\n%s", err, strings.TrimSpace(last))
	}
	return nil
}
