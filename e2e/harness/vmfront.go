package harness

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ControlServingCert is a serving certificate for ewgate's VM control endpoint (15012), made by a
// CA of its own, written as files ewgate's control.tls can name.
type ControlServingCert struct {
	CA       *CA
	CertFile string
	KeyFile  string
}

// NewControlServingCert makes a CA and a server certificate for san (the name pilot-agent
// checks: ISTIOD_SAN, istiod.istio-system.svc by default) in dir.
func NewControlServingCert(dir, san string) (*ControlServingCert, error) {
	ca, err := NewCA("ewgate e2e 15012 CA")
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue(LeafOptions{CommonName: san, DNSNames: []string{san}})
	if err != nil {
		return nil, err
	}
	s := &ControlServingCert{CA: ca, CertFile: filepath.Join(dir, "control-tls.crt"), KeyFile: filepath.Join(dir, "control-tls.key")}
	if err := writeFile(s.CertFile, certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := writeFile(s.KeyFile, keyPEM, 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

// Metrics returns ewgate's Prometheus text (its admin /metrics).
func (e *Ewgate) Metrics(ctx context.Context) (string, error) { return e.Get(ctx, "/metrics") }

// MetricSum adds up the samples of the metric family name in Prometheus text whose label set
// contains every one of labels (each `key="value"`). A family with no such sample sums to 0.
func MetricSum(text, name string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var lbls string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.Index(rest, "}")
			if end < 0 {
				continue
			}
			lbls, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another family with this prefix (name_bucket, name_total...)
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(","+lbls+",", ","+l+",") {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// ReadFileWait reads a file some peer writes (e.g. the root ewgate's built-in CA generates on
// its first start), waiting for it under ctx while p runs.
func ReadFileWait(ctx context.Context, p *Proc, path string) ([]byte, error) {
	var b []byte
	err := p.WaitFor(ctx, 50*time.Millisecond, func() error {
		var err error
		if b, err = os.ReadFile(path); err != nil {
			return err
		}
		if len(b) == 0 {
			return fmt.Errorf("%s is empty", path)
		}
		return nil
	})
	return b, err
}
