package bench

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// The backend speaks a tiny protocol inside TLS. The client opens with a 9-byte header: a
// command byte and a big-endian uint64 parameter.
const (
	cmdSource = 'S' // the backend writes the pattern until the client goes away (bulk download)
	cmdEcho   = 'E' // frames of <param> bytes are echoed; a frame starting "QUIT" makes the backend close
	cmdPing   = 'P' // one exchange of <param> bytes, then the backend closes first (no TIME_WAIT on the proxy's dialing side)
)

const (
	patternLen = 64 << 10
	sourceBuf  = 4 * patternLen
)

var quitFrame = []byte("QUIT")

// pattern is the bulk payload: deterministic pseudo-random bytes, periodic in patternLen, so a
// client can check every byte it receives without keeping a copy of the stream.
var pattern = func() []byte {
	b := make([]byte, sourceBuf)
	x := uint64(0x9e3779b97f4a7c15)
	for i := range patternLen {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x >> 32)
	}
	for i := patternLen; i < len(b); i++ {
		b[i] = b[i%patternLen]
	}
	return b
}()

// Backend is the TLS server every proxy (and the direct run) reaches.
type Backend struct {
	ln  net.Listener
	cfg *tls.Config

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// StartBackend listens on a free loopback port and serves until Close.
func StartBackend(cert tls.Certificate) (*Backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: backend listen: %w", err)
	}
	b := &Backend{ln: ln, cfg: ServerConfig(cert), conns: map[net.Conn]struct{}{}}
	b.wg.Go(b.accept)
	return b, nil
}

// Addr is the backend's listening address.
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// Close stops accepting, closes every connection and waits for their goroutines.
func (b *Backend) Close() {
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.ln.Close()
	b.wg.Wait()
}

func (b *Backend) accept() {
	delay := 5 * time.Millisecond
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of files or similar: back off (bounded) instead of spinning.
			t := time.NewTimer(delay)
			<-t.C
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Go(func() {
			defer func() {
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				c.Close()
			}()
			serveBench(tls.Server(c, b.cfg))
		})
	}
}

func serveBench(c *tls.Conn) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	param := binary.BigEndian.Uint64(hdr[1:])
	switch hdr[0] {
	case cmdSource:
		for {
			if _, err := c.Write(pattern); err != nil {
				return
			}
		}
	case cmdEcho, cmdPing:
		if param == 0 || param > 1<<20 {
			return
		}
		frame := make([]byte, param)
		for {
			if _, err := io.ReadFull(c, frame); err != nil {
				return
			}
			if hdr[0] == cmdEcho && bytes.HasPrefix(frame, quitFrame) {
				c.CloseWrite()
				return
			}
			if _, err := c.Write(frame); err != nil {
				return
			}
			if hdr[0] == cmdPing {
				c.CloseWrite()
				return
			}
		}
	}
}

// RunBackendProcess is the body of `ewbench backend`: it serves until stdin reaches EOF (the
// harness holds the pipe; if the harness dies, the backend goes with it) and prints its address
// as the first line on stdout.
func RunBackendProcess(certFile, keyFile string, stdin io.Reader, stdout io.Writer) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("bench: backend keypair: %w", err)
	}
	b, err := StartBackend(cert)
	if err != nil {
		return err
	}
	defer b.Close()
	w := bufio.NewWriter(stdout)
	fmt.Fprintf(w, "listening %s\n", b.Addr())
	if err := w.Flush(); err != nil {
		return err
	}
	io.Copy(io.Discard, stdin)
	return nil
}

func header(cmd byte, param uint64) []byte {
	h := make([]byte, 9)
	h[0] = cmd
	binary.BigEndian.PutUint64(h[1:], param)
	return h
}
