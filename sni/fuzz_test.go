package sni

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseClientHello runs as a unit test over its seeds (every capture in testdata, plus the
// same re-framed into small records) and with -fuzz on demand. ParseClientHello must not panic,
// must return a sentinel error, and any server name it returns must occur in the input.
func FuzzParseClientHello(f *testing.F) {
	files, err := filepath.Glob("testdata/*.bin")
	if err != nil || len(files) == 0 {
		f.Fatalf("no captures in testdata: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(frame(handshakeStream(f, b), 200))
	}
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add(record(buildHello(f, helloSpec{exts: []ext{sniExt("a.test"), alpnExt("istio")}})))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseClientHello(data)
		if err != nil {
			known := false
			for _, s := range []error{ErrNotTLS, ErrTruncated, ErrNoSNI, ErrMalformed} {
				known = known || errors.Is(err, s)
			}
			if !known {
				t.Fatalf("error without a sentinel: %v", err)
			}
			if (h != nil) != errors.Is(err, ErrNoSNI) {
				t.Fatalf("hello %+v with error %v", h, err)
			}
			if h != nil && h.ServerName != "" {
				t.Fatalf("ErrNoSNI with server name %q", h.ServerName)
			}
			return
		}
		if h.ServerName == "" {
			t.Fatal("empty server name without error")
		}
		if !bytes.Contains(bytes.ToLower(data), []byte(h.ServerName)) {
			t.Fatalf("server name %q does not occur in the input", h.ServerName)
		}
		if n, err := normalizeHostName([]byte(h.ServerName)); err != nil || n != h.ServerName {
			t.Fatalf("server name %q is not a normalised host name: %q, %v", h.ServerName, n, err)
		}
		for _, p := range h.ALPN {
			if p == "" || !bytes.Contains(data, []byte(p)) {
				t.Fatalf("ALPN %q does not occur in the input", p)
			}
		}
	})
}
