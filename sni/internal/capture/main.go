// Command capture records the first bytes a TLS client sends (its ClientHello, as on the wire) into
// a file, for sni's tests. It listens on 127.0.0.1, runs the client command with {PORT} replaced by
// the listening port, stores what the first connection sends until it goes quiet (the client then
// waits for a ServerHello that never comes), and stops the client by its PID.
//
// From the repository root, for example:
//
//	go run ./sni/internal/capture -o sni/testdata/curl.bin -- curl -sk --resolve curl.example.com:{PORT}:127.0.0.1 https://curl.example.com:{PORT}/
//	go run ./sni/internal/capture -o sni/testdata/go.bin -go outbound_.9080_._.reviews.default.svc.cluster.local -alpn istio-peer-exchange,istio
//
// sni/testdata/README.md lists the command for each committed capture.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	out := flag.String("o", "", "output file (required)")
	goName := flag.String("go", "", "instead of a command, connect with crypto/tls using this server name")
	alpn := flag.String("alpn", "", "comma-separated ALPN protocols for -go")
	quiet := flag.Duration("quiet", 700*time.Millisecond, "the hello is complete once the client sends nothing for this long")
	flag.Parse()
	if *out == "" || (*goName == "") == (flag.NArg() == 0) {
		log.Fatal("usage: capture -o FILE (-go SERVERNAME [-alpn P1,P2] | -- COMMAND ARGS... with {PORT})")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	stop := func() {}
	if *goName != "" {
		go goClient(ln.Addr().String(), *goName, *alpn)
	} else {
		args := make([]string, flag.NArg())
		for i, a := range flag.Args() {
			args[i] = strings.ReplaceAll(a, "{PORT}", port)
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			log.Fatal(err)
		}
		stop = func() {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}
	b, err := record(ln, *quiet)
	stop()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d bytes\n", *out, len(b))
}

// record accepts one connection and returns what it sends until it is quiet or closes.
func record(ln net.Listener, quiet time.Duration) ([]byte, error) {
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var b []byte
	buf := make([]byte, 64<<10)
	for len(b) < 1<<20 {
		c.SetReadDeadline(time.Now().Add(quiet))
		n, err := c.Read(buf)
		b = append(b, buf[:n]...)
		var ne net.Error
		if len(b) > 0 && (errors.Is(err, io.EOF) || errors.As(err, &ne) && ne.Timeout()) {
			return b, nil // some clients (Chromium) give up and close on their own
		}
		if err != nil {
			return b, fmt.Errorf("after %d bytes: %w", len(b), err)
		}
	}
	return b, nil
}

func goClient(addr, name, alpn string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		log.Print(err)
		return
	}
	defer c.Close()
	var protos []string
	if alpn != "" {
		protos = strings.Split(alpn, ",")
	}
	_ = tls.Client(c, &tls.Config{ServerName: name, NextProtos: protos, InsecureSkipVerify: true}).Handshake()
}
