package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// A peer that needs files at fixed system paths (a VM's /etc/hosts) runs in a mount namespace of
// its own: StartProc starts this test binary in a new mount namespace (SysProcAttr.Unshareflags;
// Go's fork also makes "/" a private mount tree there, so nothing propagates back), the child
// bind-mounts each file over its target and execs the peer. The peer keeps the child's pid,
// process group and Pdeathsig (execve keeps them), so Stop and the /proc readers see the peer
// itself. A multi-threaded Go process cannot unshare its own mount namespace (CLONE_NEWNS
// implies CLONE_FS), hence the re-exec; the machine's own mount table is never changed.
const (
	roleMountNS = "mountns-exec"
	envBinds    = "EWGATE_E2E_BINDS" // JSON [[source, target], ...]
)

// Bind is a file or directory bind-mounted over Target (which must exist) in the peer's private
// mount namespace.
type Bind struct {
	Source, Target string
}

// mountNSCommand is what StartProc runs for a spec with Binds: this binary, then the peer.
func mountNSCommand(spec ProcSpec) (path string, args, env []string, err error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, nil, err
	}
	pairs := make([][2]string, len(spec.Binds))
	for i, b := range spec.Binds {
		pairs[i] = [2]string{b.Source, b.Target}
	}
	j, err := json.Marshal(pairs)
	if err != nil {
		return "", nil, nil, err
	}
	args = append([]string{spec.Path}, spec.Args...)
	env = append([]string{envRole + "=" + roleMountNS, envBinds + "=" + string(j)}, spec.Env...)
	return self, args, env, nil
}

// runMountNSIfRequested is the child's side: bind-mount, drop the harness's variables, exec the
// peer (os.Args[1:]). It returns only if this process is not such a child.
func runMountNSIfRequested() {
	if os.Getenv(envRole) != roleMountNS {
		return
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "harness mount namespace:", err)
		os.Exit(111)
	}
	var pairs [][2]string
	if err := json.Unmarshal([]byte(os.Getenv(envBinds)), &pairs); err != nil {
		fail(err)
	}
	for _, p := range pairs {
		if err := syscall.Mount(p[0], p[1], "", syscall.MS_BIND, ""); err != nil {
			fail(fmt.Errorf("bind %s over %s: %w", p[0], p[1], err))
		}
	}
	if len(os.Args) < 2 {
		fail(fmt.Errorf("no command"))
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envRole+"=") && !strings.HasPrefix(kv, envBinds+"=") {
			env = append(env, kv)
		}
	}
	fail(syscall.Exec(os.Args[1], os.Args[1:], env))
}
