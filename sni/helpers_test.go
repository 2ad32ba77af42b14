package sni

import (
	"crypto/tls"
	"net"
	"sync"
	"testing"

	"golang.org/x/crypto/cryptobyte"
)

// ext is one hello extension for buildHello.
type ext struct {
	typ  uint16
	data []byte
}

// helloSpec describes a hand-built ClientHello; the zero value is a minimal valid TLS 1.2 hello
// without extensions.
type helloSpec struct {
	version   uint16 // 0 means 0x0303
	sessionID []byte
	exts      []ext
	noExtsLen bool // omit the extensions block entirely (exts ignored)
}

// buildHello returns a ClientHello handshake message (with its 4-byte header).
func buildHello(t testing.TB, s helloSpec) []byte {
	t.Helper()
	if s.version == 0 {
		s.version = 0x0303
	}
	var b cryptobyte.Builder
	b.AddUint8(handshakeTypeClientHello)
	b.AddUint24LengthPrefixed(func(b *cryptobyte.Builder) {
		b.AddUint16(s.version)
		b.AddBytes(make([]byte, 32))
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(s.sessionID) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint16(0x1301); b.AddUint16(0xc02f) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddUint8(0) })
		if s.noExtsLen {
			return
		}
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
			for _, e := range s.exts {
				b.AddUint16(e.typ)
				b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.data) })
			}
		})
	})
	msg, err := b.Bytes()
	if err != nil {
		t.Fatalf("building hello: %v", err)
	}
	return msg
}

// sniExt builds a server_name extension with one host_name entry per name.
func sniExt(names ...string) ext {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, n := range names {
			b.AddUint8(nameTypeHostName)
			b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(n)) })
		}
	})
	return ext{extServerName, b.BytesOrPanic()}
}

// alpnExt builds an ALPN extension.
func alpnExt(protos ...string) ext {
	var b cryptobyte.Builder
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) {
		for _, p := range protos {
			b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(p)) })
		}
	})
	return ext{extALPN, b.BytesOrPanic()}
}

// record frames a handshake message as one TLS record (version 3.1 as clients send).
func record(msg []byte) []byte { return frame(msg, len(msg)) }

// frame splits a handshake stream into records of size bytes each (the last one shorter).
func frame(msg []byte, size int) []byte {
	var out []byte
	for len(msg) > 0 {
		n := min(size, len(msg))
		out = append(out, recordTypeHandshake, 3, 1, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// handshakeStream extracts the handshake bytes of the records of a (complete) hello capture,
// assuming the hello is the only content of its records.
func handshakeStream(t testing.TB, wire []byte) []byte {
	t.Helper()
	var out []byte
	for len(wire) > 0 {
		if len(wire) < recordHeaderLen || wire[0] != recordTypeHandshake {
			t.Fatalf("not a handshake record: % x", wire[:min(len(wire), 5)])
		}
		n := int(wire[3])<<8 | int(wire[4])
		if len(wire) < recordHeaderLen+n {
			t.Fatalf("partial record")
		}
		out = append(out, wire[recordHeaderLen:recordHeaderLen+n]...)
		wire = wire[recordHeaderLen+n:]
	}
	return out
}

// goHello returns the bytes crypto/tls sends as its first flight (a ClientHello in one record,
// written in one Write) for the given server name and ALPN.
func goHello(t testing.TB, serverName string, alpn []string) []byte {
	t.Helper()
	c, s := net.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cfg := &tls.Config{ServerName: serverName, NextProtos: alpn, InsecureSkipVerify: true}
		_ = tls.Client(c, cfg).Handshake() // fails once s is closed; only the hello matters
		c.Close()
	}()
	buf := make([]byte, 64<<10)
	n, err := s.Read(buf)
	s.Close()
	wg.Wait()
	if err != nil {
		t.Fatalf("reading Go hello: %v", err)
	}
	return buf[:n]
}
