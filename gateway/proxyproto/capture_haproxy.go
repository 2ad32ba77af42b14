//go:build ignore

// capture_haproxy records the PROXY headers a real HAProxy sends to a backend, into testdata/.
// Regenerate (needs the haproxy binary, e.g. the Debian package) from this directory with:
//
//	go run capture_haproxy.go
//
// For each variant it starts HAProxy on loopback with a TCP frontend whose backend is a listener of
// this program, connects through it, sends payload, and stores the bytes the backend received
// (header + payload). The "local" variant stores a health check connection instead (command LOCAL).
// Everything listens on 127.0.0.1 only; the HAProxy process is stopped by its PID.
package main

import (
	"bytes"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// payload is what the client sends after connecting; it must arrive intact after the header.
const payload = "\x16\x03\x01\x00\x05hello"

var variants = []struct {
	file, server string
	check        bool // capture a health check, not a client connection
}{
	{"haproxy-v1.bin", "send-proxy", false},
	{"haproxy-v2.bin", "send-proxy-v2", false},
	{"haproxy-v2-tlvs.bin", "send-proxy-v2 proxy-v2-options authority,crc32c,unique-id", false},
	{"haproxy-v2-local.bin", "send-proxy-v2 check check-send-proxy inter 100ms", true},
}

func main() {
	for _, v := range variants {
		b, err := capture(v.server, v.check)
		if err != nil {
			log.Fatalf("%s: %v", v.file, err)
		}
		if err := os.WriteFile(filepath.Join("testdata", v.file), b, 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d bytes\n", v.file, len(b))
	}
}

func capture(serverOpts string, check bool) ([]byte, error) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer backend.Close()
	// A free port for the frontend (tiny race with other programs; fine for a tool).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	front := l.Addr().String()
	l.Close()

	dir, err := os.MkdirTemp("", "haproxy-capture")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cfg := fmt.Sprintf(`global
	maxconn 10
defaults
	mode tcp
	timeout connect 2s
	timeout client 5s
	timeout server 5s
	unique-id-format %%{+X}o\ %%ci:%%cp_%%fi:%%fp_%%Ts_%%rt
frontend fe
	bind %s
	default_backend be
backend be
	server s1 %s %s
`, front, backend.Addr(), serverOpts)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("haproxy", "-db", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()

	got := make(chan []byte, 1)
	go func() {
		c, err := backend.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var buf []byte
		tmp := make([]byte, 4096)
		for {
			n, err := c.Read(tmp)
			buf = append(buf, tmp[:n]...)
			if err != nil || (!check && bytes.HasSuffix(buf, []byte(payload))) {
				break // a health check closes after its header: EOF ends it
			}
		}
		got <- buf
	}()

	if !check {
		c, err := dialRetry(front, 5*time.Second)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		if _, err := c.Write([]byte(payload)); err != nil {
			return nil, err
		}
	}
	select {
	case b := <-got:
		if len(b) == 0 {
			return nil, fmt.Errorf("backend received nothing")
		}
		return b, nil
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("no connection from haproxy")
	}
}

// dialRetry dials until HAProxy listens or the deadline passes.
func dialRetry(addr string, d time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(d)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
