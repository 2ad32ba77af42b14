// Command image writes an OCI image of the ewgate binary as an OCI image-layout tarball, with
// no Docker daemon, no base image and no registry: one layer holding /ewgate (and nothing
// else), run as UID/GID 65532. Every timestamp is fixed and the gzip stream carries no name or
// time, so the same binary always gives the same digest (`make image` builds the binary
// reproducibly with -trimpath and an empty build ID).
//
//	go run ./deploy/image -binary bin/ewgate-linux-amd64 -out bin/ewgate-image.tar -tag dev
//
// Load it with `docker load` / `podman load`, or push it with any OCI tool (skopeo, crane).
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

// source is the repository the image is built from (org.opencontainers.image.source).
const source = "https://github.com/ewgate/ewgate"

// meta is what the image says about its build: every timestamp in it is created (the commit's
// time, SOURCE_DATE_EPOCH-style), so the same commit gives the same bytes and the image's date
// is its source's, not 1970.
type meta struct {
	tag      string    // the version: image tag and org.opencontainers.image.version
	revision string    // the source commit
	created  time.Time // the commit time
}

func (m meta) labels() map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":    "ewgate",
		"org.opencontainers.image.version":  m.tag,
		"org.opencontainers.image.revision": m.revision,
		"org.opencontainers.image.source":   source,
		"org.opencontainers.image.created":  m.created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.licenses": "Apache-2.0",
	}
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type blob struct {
	data   []byte
	digest string
}

func newBlob(b []byte) blob {
	sum := sha256.Sum256(b)
	return blob{data: b, digest: "sha256:" + hex.EncodeToString(sum[:])}
}

// layer is a gzipped tar holding the binary as /ewgate; it returns the layer and the digest of
// its uncompressed tar (the config's diff_id).
func layer(binary []byte, epoch time.Time) (blob, string, error) {
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	hdr := &tar.Header{Name: "ewgate", Mode: 0o755, Size: int64(len(binary)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return blob{}, "", err
	}
	if _, err := tw.Write(binary); err != nil {
		return blob{}, "", err
	}
	if err := tw.Close(); err != nil {
		return blob{}, "", err
	}
	diffID := newBlob(tarBuf.Bytes()).digest
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return blob{}, "", err
	}
	if _, err := zw.Write(tarBuf.Bytes()); err != nil {
		return blob{}, "", err
	}
	if err := zw.Close(); err != nil {
		return blob{}, "", err
	}
	return newBlob(gz.Bytes()), diffID, nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// build returns the files of the OCI layout, in the order they are written.
func build(binary []byte, arch string, m meta) ([]string, map[string][]byte, string, error) {
	epoch, tag := m.created.UTC(), m.tag
	l, diffID, err := layer(binary, epoch)
	if err != nil {
		return nil, nil, "", err
	}
	config := newBlob(mustJSON(map[string]any{
		"architecture": arch,
		"os":           "linux",
		"created":      epoch.Format(time.RFC3339),
		"config": map[string]any{
			"User":         "65532:65532",
			"Entrypoint":   []string{"/ewgate"},
			"Cmd":          []string{"serve", "--config", "/etc/ewgate/config/ewgate.yaml"},
			"ExposedPorts": map[string]any{"15012/tcp": map[string]any{}, "15020/tcp": map[string]any{}, "15021/tcp": map[string]any{}, "15443/tcp": map[string]any{}},
			"Labels":       m.labels(),
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "deploy/image: the static ewgate binary"}},
	}))
	manifest := newBlob(mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: config.digest, Size: int64(len(config.data))},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: l.digest, Size: int64(len(l.data))}},
	}))
	index := mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: manifest.digest, Size: int64(len(manifest.data)),
			Annotations: map[string]string{"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": "ewgate:" + tag,
				"org.opencontainers.image.revision": m.revision, "org.opencontainers.image.source": source,
				"org.opencontainers.image.created": epoch.Format(time.RFC3339)},
			Platform: &platform{Architecture: arch, OS: "linux"},
		}},
	})
	files := map[string][]byte{"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`), "index.json": index}
	order := []string{"oci-layout", "index.json"}
	for _, b := range []blob{config, manifest, l} {
		name := "blobs/sha256/" + b.digest[len("sha256:"):]
		files[name] = b.data
		order = append(order, name)
	}
	return order, files, manifest.digest, nil
}

func writeTar(path string, order []string, files map[string][]byte, epoch time.Time) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: dir, Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir, Format: tar.FormatPAX}); err != nil {
			return err
		}
	}
	for _, name := range order {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(files[name]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func main() {
	binary := flag.String("binary", "", "the static linux ewgate binary (required)")
	out := flag.String("out", "ewgate-image.tar", "the OCI image-layout tarball to write")
	arch := flag.String("arch", runtime.GOARCH, "the binary's GOARCH")
	tag := flag.String("tag", "dev", "the image tag (ref.name annotation) and version label")
	revision := flag.String("revision", "unknown", "the source commit (org.opencontainers.image.revision)")
	created := flag.Int64("created", sourceDateEpoch(), "unix seconds of the commit (org.opencontainers.image.created and every timestamp in the image); default $SOURCE_DATE_EPOCH")
	flag.Parse()
	if *created <= 0 {
		fmt.Fprintf(os.Stderr, "image: -created (or SOURCE_DATE_EPOCH) is required: the commit time, e.g. from git log -1 --format=%%ct\n")
		os.Exit(2)
	}
	if err := run(*binary, *out, *arch, meta{tag: *tag, revision: *revision, created: time.Unix(*created, 0)}); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

// sourceDateEpoch is $SOURCE_DATE_EPOCH (reproducible-builds.org), or 0.
func sourceDateEpoch() int64 {
	n, _ := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
	return n
}

func run(binary, out, arch string, m meta) error {
	if binary == "" {
		return fmt.Errorf("-binary is required")
	}
	b, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	order, files, digest, err := build(b, arch, m)
	if err != nil {
		return err
	}
	if err := writeTar(out, order, files, m.created.UTC()); err != nil {
		return err
	}
	fmt.Printf("%s: ewgate:%s %s (manifest digest)\n", out, m.tag, digest)
	return nil
}
