package deploy_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// imageTools are the real OCI tools the image test drives; each Debian package is named as its
// command.
var imageTools = []string{"skopeo", "umoci", "runc"}

// TestImageInRealOCITools builds the image exactly as `make image` does (the same target, into a
// temporary BIN) and hands the tarball to real OCI tools: skopeo reads the archive and its config
// (user 65532, the entrypoint, the manifest digest make printed) and copies it into an OCI layout
// directory, checking every blob's digest; umoci unpacks that into a runtime bundle whose root
// file system holds the static binary and nothing else; runc runs `ewgate version` from the
// bundle, as the image's user. Missing tools are installed with apt-get, as `make tools` installs
// openssl and curl.
func TestImageInRealOCITools(t *testing.T) {
	installMissing(t, imageTools...)
	bin := t.TempDir()
	out := run(t, "..", "make", "--no-print-directory", "image", "BIN="+bin)
	m := regexp.MustCompile(`ewgate-image\.tar: ewgate:(\S+) (sha256:[0-9a-f]{64}) \(manifest digest\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("make image printed no tag and digest:\n%s", out)
	}
	tag, digest := m[1], m[2]
	archive := "oci-archive:" + filepath.Join(bin, "ewgate-image.tar")

	var inspect struct {
		Digest       string
		Architecture string
		Os           string
		Layers       []string
	}
	mustJSON(t, run(t, "", "skopeo", "inspect", archive), &inspect)
	if inspect.Digest != digest || inspect.Os != "linux" || len(inspect.Layers) != 1 {
		t.Errorf("skopeo inspect: %+v, want digest %s, os linux, one layer", inspect, digest)
	}
	var config struct {
		Created time.Time `json:"created"`
		Config  struct {
			User       string
			Entrypoint []string
			Cmd        []string
			Labels     map[string]string
		} `json:"config"`
	}
	mustJSON(t, run(t, "", "skopeo", "inspect", "--config", archive), &config)
	// Dated by the commit, labelled with where it comes from (before: 1970, no source or revision).
	commitTime := strings.TrimSpace(run(t, "..", "git", "log", "-1", "--format=%cI"))
	revision := strings.TrimSpace(run(t, "..", "git", "rev-parse", "HEAD"))
	if want, err := time.Parse(time.RFC3339, commitTime); err != nil || !config.Created.Equal(want) {
		t.Errorf("image created %v, want the commit time %s (%v)", config.Created, commitTime, err)
	}
	for k, want := range map[string]string{"org.opencontainers.image.revision": revision, "org.opencontainers.image.version": tag,
		"org.opencontainers.image.source": "https://github.com/ewgate/ewgate"} {
		if got := config.Config.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if c := config.Config; c.User != "65532:65532" || strings.Join(c.Entrypoint, " ") != "/ewgate" ||
		strings.Join(c.Cmd, " ") != "serve --config /etc/ewgate/config/ewgate.yaml" {
		t.Errorf("image config %+v: want user 65532:65532, entrypoint /ewgate, cmd serve --config /etc/ewgate/config/ewgate.yaml", c)
	}

	work := t.TempDir()
	run(t, work, "skopeo", "copy", "--quiet", archive, "oci:layout:ewgate")
	run(t, work, "umoci", "unpack", "--image", "layout:ewgate", "bundle")
	var files []string
	rootfs := filepath.Join(work, "bundle", "rootfs")
	if err := filepath.WalkDir(rootfs, func(p string, _ os.DirEntry, err error) error {
		if p != rootfs {
			files = append(files, strings.TrimPrefix(p, rootfs))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	if strings.Join(files, " ") != "/ewgate" {
		t.Errorf("unpacked root file system holds %v, want only /ewgate", files)
	}
	inImage, err := os.ReadFile(filepath.Join(rootfs, "ewgate"))
	if err != nil {
		t.Fatal(err)
	}
	built, err := os.ReadFile(filepath.Join(bin, "ewgate-linux-"+inspect.Architecture))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inImage, built) {
		t.Error("the image's /ewgate differs from the binary make image built")
	}

	// umoci's runtime config runs the image's user with its entrypoint and cmd; run `version`
	// instead of serve, without a terminal.
	specPath := filepath.Join(work, "bundle", "config.json")
	var spec map[string]any
	raw, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	mustJSON(t, string(raw), &spec)
	process := spec["process"].(map[string]any)
	user := process["user"].(map[string]any)
	if user["uid"] != float64(65532) || user["gid"] != float64(65532) {
		t.Errorf("runtime config user %v, want uid and gid 65532", user)
	}
	if strings.Join(toStrings(process["args"]), " ") != "/ewgate serve --config /etc/ewgate/config/ewgate.yaml" {
		t.Errorf("runtime config args %v", process["args"])
	}
	process["args"], process["terminal"] = []string{"/ewgate", "version"}, false
	raw, _ = json.Marshal(spec)
	if err := os.WriteFile(specPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	id := "ewgate-image-test-" + filepath.Base(work)
	got := run(t, filepath.Join(work, "bundle"), "runc", "--root", filepath.Join(work, "runc"), "run", id)
	if !strings.HasPrefix(got, "ewgate "+tag+" ") || !strings.Contains(got, "linux/"+inspect.Architecture) {
		t.Errorf("ewgate version in the image: %q, want ewgate %s ... linux/%s", got, tag, inspect.Architecture)
	}
}

// installMissing installs, as root through apt-get, the Debian packages of the commands this
// machine lacks; a tool is never skipped.
func installMissing(t *testing.T, cmds ...string) {
	t.Helper()
	var missing []string
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return
	}
	t.Logf("installing %v with apt-get", missing)
	cmd := exec.Command("sh", "-c", "apt-get update -qq && apt-get install -y -qq "+strings.Join(missing, " "))
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installing %v (needs root and apt): %v\n%s", missing, err, out)
	}
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

func mustJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("%v in %s", err, s)
	}
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	s := make([]string, len(l))
	for i, x := range l {
		s[i], _ = x.(string)
	}
	return s
}
