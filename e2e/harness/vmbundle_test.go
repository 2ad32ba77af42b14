package harness

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ParseEnvFile reads what bash reads when istio-start.sh sources cluster.env, and refuses what
// bash would expand or run. Every valid case is checked against bash itself when it is there.
func TestParseEnvFile(t *testing.T) {
	for _, tc := range []struct {
		line, want string // want: the value of K; "" with bad: an error
		bad        bool
	}{
		{line: `K='plain value'`, want: "plain value"},
		{line: `K='it'\''s'`, want: "it's"},  // ewgate vm-config's quoting
		{line: `K='it'"'"'s'`, want: "it's"}, // istioctl's (shellescape.Quote)
		{line: `K={"app":"web"}`, want: `{app:web}`},
		{line: `K='{"app":"web"}'`, want: `{"app":"web"}`},
		{line: `K=istiod.istio-system.svc:15012`, want: "istiod.istio-system.svc:15012"},
		{line: `K="a \"b\" \$c \\ d"`, want: `a "b" $c \ d`},
		{line: `K=a\ b`, want: "a b"},
		{line: `export K=x`, want: "x"},
		{line: `K=x # comment`, want: "x"},
		{line: `K=`, want: ""},
		{line: `K=$HOME`, bad: true},
		{line: `K="$HOME"`, bad: true},
		{line: "K=`id`", bad: true},
		{line: `K=a b`, bad: true},
		{line: `K='open`, bad: true},
		{line: `K=x;y`, bad: true},
		{line: `1K=x`, bad: true},
	} {
		vars, err := ParseEnvFile([]byte("# cluster.env\n\n" + tc.line + "\n"))
		if tc.bad {
			if err == nil {
				t.Errorf("%s: parsed as %q, want an error", tc.line, vars["K"])
			}
			continue
		}
		if err != nil || vars["K"] != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.line, vars["K"], err, tc.want)
			continue
		}
		if bash, err := exec.LookPath("bash"); err == nil {
			out, err := exec.Command(bash, "-c", "set -a; "+tc.line+"\nprintf %s \"$K\"").Output()
			if err != nil || string(out) != tc.want {
				t.Errorf("%s: bash reads %q (%v), the parser %q", tc.line, out, err, tc.want)
			}
		}
	}
}

// A peer with Binds sees the bound file at the target path; the machine does not.
func TestProcBindsInPrivateMountNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CLONE_NEWNS, mount)")
	}
	before, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n127.1.2.3 istiod.istio-system.svc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := StartProc(ProcSpec{Name: "cat", Path: "/bin/cat", Args: []string{"/etc/hosts"},
		Binds: []Bind{{Source: hosts, Target: "/etc/hosts"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-p.Exited():
	case <-ctx.Done():
		t.Fatal("cat did not exit")
	}
	if err := p.ExitErr(); err != nil || !strings.Contains(p.Log(), "127.1.2.3 istiod.istio-system.svc") {
		t.Fatalf("the peer's /etc/hosts (%v):\n%s", err, p.Log())
	}
	if after, err := os.ReadFile("/etc/hosts"); err != nil || !bytes.Equal(after, before) {
		t.Fatalf("the machine's /etc/hosts changed (%v)", err)
	}
}
