package bench

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// ControlBench is one Go benchmark of ewgate's control side, over benchCount runs.
type ControlBench struct {
	Package string               `json:"package"`
	Name    string               `json:"name"`
	Runs    int                  `json:"runs"`
	Metrics map[string][]float64 `json:"metrics"` // unit -> value of each run (ns/op, verifications/s, regs/s, B/op, allocs/op)
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// runControl runs the control-side benchmarks of the main module (go test -bench): token
// verification, registration, and the xDS path from a registration to the push that carries it.
func runControl(ctx context.Context, repo, benchtime string, count int) ([]ControlBench, error) {
	var out []ControlBench
	for _, pkg := range []struct{ dir, pattern string }{
		{"./authn", "^BenchmarkVerify"},
		{"./registrar", "^BenchmarkRegister$"},
		{"./gateway/xdsclient", "^BenchmarkRegistrationToPush$"},
		{"./gateway/controlplane", "^Benchmark(Build10kEndpoints|Burst1000Registrations)$"},
	} {
		cmd := exec.CommandContext(ctx, goTool(), "test", "-run", "^$", "-bench", pkg.pattern,
			"-benchtime", benchtime, "-count", strconv.Itoa(count), "-benchmem", pkg.dir)
		cmd.Dir = repo
		b, err := cmd.CombinedOutput()
		if err != nil {
			return out, fmt.Errorf("bench: go test -bench %s: %w\n%s", pkg.dir, err, tailString(string(b), 1500))
		}
		out = append(out, parseBench(strings.TrimPrefix(pkg.dir, "./"), string(b))...)
	}
	return out, nil
}

func parseBench(pkg, text string) []ControlBench {
	byName := map[string]*ControlBench{}
	var order []string
	for _, line := range strings.Split(text, "\n") {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		cb := byName[m[1]]
		if cb == nil {
			cb = &ControlBench{Package: pkg, Name: m[1], Metrics: map[string][]float64{}}
			byName[m[1]] = cb
			order = append(order, m[1])
		}
		cb.Runs++
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				cb.Metrics[f[i+1]] = append(cb.Metrics[f[i+1]], v)
			}
		}
	}
	out := make([]ControlBench, 0, len(order))
	for _, n := range order {
		out = append(out, *byName[n])
	}
	return out
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// statOf is the median, min and max of values.
func statOf(values []float64) Stat {
	if len(values) == 0 {
		return Stat{}
	}
	v := slices.Clone(values)
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Stat{Median: med, Min: v[0], Max: v[len(v)-1], N: len(v)}
}
