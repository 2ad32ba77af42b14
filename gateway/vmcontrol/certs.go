package vmcontrol

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// certReloader serves the certificate of two PEM files and re-reads them when their size or
// modification time changes, checked at most every interval, on a handshake: no goroutine, and
// a renewed certificate (cert-manager, a rotated Secret) is served without a restart. A broken
// new pair is logged and the last good one kept.
type certReloader struct {
	certFile, keyFile string
	interval          time.Duration
	log               *zap.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string
	checkedAt time.Time
}

func newCertReloader(certFile, keyFile string, interval time.Duration, log *zap.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, interval: interval, log: log}
	stamp, err := r.fileStamp()
	if err != nil {
		return nil, err
	}
	if err := r.load(stamp); err != nil {
		return nil, err
	}
	r.checkedAt = time.Now()
	return r, nil
}

func (r *certReloader) fileStamp() (string, error) {
	s := ""
	for _, name := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return "", fmt.Errorf("vmcontrol: %w", err)
		}
		s += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return s, nil
}

func (r *certReloader) load(stamp string) error {
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		// LoadX509KeyPair's errors name the files and the PEM problem, never key bytes.
		return fmt.Errorf("vmcontrol: serving certificate: %w", err)
	}
	r.cert, r.stamp = &c, stamp
	return nil
}

// get is tls.Config.GetCertificate.
func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checkedAt) >= r.interval {
		r.checkedAt = now
		stamp, err := r.fileStamp()
		if err == nil && stamp != r.stamp {
			if err = r.load(stamp); err == nil {
				r.log.Info("control: serving certificate reloaded", zap.String("cert_file", r.certFile))
			}
		}
		if err != nil {
			r.log.Warn("control: serving certificate not reloaded, keeping the previous one", zap.Error(err))
			r.stamp = stamp // do not retry a broken pair on every handshake
		}
	}
	return r.cert, nil
}
