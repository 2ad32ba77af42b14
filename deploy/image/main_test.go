package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestImageReproducibleAndMinimal builds the image twice from the same binary: the tarballs are
// byte-identical; the image runs as a non-root user and its only layer holds only /ewgate.
var testMeta = meta{tag: "v1", revision: "0123456789abcdef0123456789abcdef01234567", created: time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)}

func TestImageReproducibleAndMinimal(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ewgate")
	if err := os.WriteFile(bin, []byte("\x7fELF not really a binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	var tars [][]byte
	for i := range 2 {
		out := filepath.Join(dir, "image"+string(rune('a'+i))+".tar")
		if err := run(bin, out, "amd64", testMeta); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		tars = append(tars, b)
	}
	if !bytes.Equal(tars[0], tars[1]) {
		t.Fatal("two builds of the same binary differ")
	}
	files := untar(t, tars[0])
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	mustUnmarshal(t, files["index.json"], &index)
	var manifest struct {
		Config descriptor   `json:"config"`
		Layers []descriptor `json:"layers"`
	}
	mustUnmarshal(t, blobOf(t, files, index.Manifests[0].Digest), &manifest)
	var config struct {
		Created string `json:"created"`
		Config  struct {
			User       string            `json:"User"`
			Entrypoint []string          `json:"Entrypoint"`
			Labels     map[string]string `json:"Labels"`
		} `json:"config"`
	}
	mustUnmarshal(t, blobOf(t, files, manifest.Config.Digest), &config)
	// The build's provenance, dated by its commit (before: no source or revision, and 1970).
	if config.Created != "2026-12-04T20:00:00Z" {
		t.Errorf("created %q, want the commit time 2026-12-04T20:00:00Z", config.Created)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.source":   "https://github.com/ewgate/ewgate",
		"org.opencontainers.image.revision": testMeta.revision,
		"org.opencontainers.image.version":  "v1",
		"org.opencontainers.image.created":  "2026-12-04T20:00:00Z",
	} {
		if got := config.Config.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if config.Config.User != "65532:65532" || strings.Join(config.Config.Entrypoint, " ") != "/ewgate" {
		t.Errorf("config %+v: want user 65532:65532, entrypoint /ewgate", config.Config)
	}
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(manifest.Layers))
	}
	zr, err := gzip.NewReader(bytes.NewReader(blobOf(t, files, manifest.Layers[0].Digest)))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	layer := untar(t, raw)
	if len(layer) != 1 || string(layer["ewgate"]) != "\x7fELF not really a binary" {
		t.Errorf("layer holds %d files, want only ewgate", len(layer))
	}
}

func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			files[h.Name], _ = io.ReadAll(tr)
		}
	}
}

func blobOf(t *testing.T, files map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
	if !ok {
		t.Fatalf("no blob %s", digest)
	}
	return b
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}
