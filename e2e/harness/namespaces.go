package harness

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A peer that needs files at fixed system paths (a VM's /etc/hosts) runs in a mount namespace of
// its own, and a peer that stands for a pod (an ewgate replica) in UTS and network namespaces of
// its own: StartProc starts this test binary with SysProcAttr.Unshareflags (for a mount namespace
// Go's fork also makes "/" a private mount tree, so nothing propagates back); the child
// bind-mounts each file over its target, sets the host name, brings its loopback up, and execs
// the peer. The peer keeps the child's pid, process group and Pdeathsig (execve keeps them), so
// Stop and the /proc readers see the peer itself. A multi-threaded Go process cannot unshare its
// own mount namespace (CLONE_NEWNS implies CLONE_FS), and Go's fork has no hook for
// sethostname, hence the re-exec; the machine's own mounts, host name and interfaces are never
// changed.
const (
	roleNSExec  = "ns-exec"
	envBinds    = "EWGATE_E2E_BINDS"    // JSON [[source, target], ...]
	envHostname = "EWGATE_E2E_HOSTNAME" // the UTS namespace's host name
	envLoUp     = "EWGATE_E2E_LO_UP"    // "1": bring lo up in the new network namespace
	envNetNS    = "EWGATE_E2E_NETNS"    // path of a network namespace to join before the exec
)

// Bind is a file or directory bind-mounted over Target (which must exist) in the peer's private
// mount namespace.
type Bind struct {
	Source, Target string
}

// needsNamespaces says whether spec runs through the re-exec child, and with which namespaces.
func needsNamespaces(spec ProcSpec) (flags uintptr, ok bool) {
	if len(spec.Binds) > 0 {
		flags |= syscall.CLONE_NEWNS
	}
	if spec.Hostname != "" {
		flags |= syscall.CLONE_NEWUTS
	}
	if spec.PrivateNet {
		flags |= syscall.CLONE_NEWNET
	}
	return flags, flags != 0 || spec.NetNSPath != ""
}

// nsCommand is what StartProc runs for a spec with namespaces: this binary, then the peer.
func nsCommand(spec ProcSpec) (path string, args, env []string, err error) {
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
	env = []string{envRole + "=" + roleNSExec, envBinds + "=" + string(j), envHostname + "=" + spec.Hostname}
	if spec.PrivateNet {
		env = append(env, envLoUp+"=1")
	}
	if spec.NetNSPath != "" {
		if spec.PrivateNet {
			return "", nil, nil, fmt.Errorf("PrivateNet and NetNSPath together")
		}
		env = append(env, envNetNS+"="+spec.NetNSPath)
	}
	return self, args, append(env, spec.Env...), nil
}

// runNSChildIfRequested is the child's side: bind-mount, set the host name, bring lo up, drop the
// harness's variables, exec the peer (os.Args[1:]). It returns only if this process is not such a
// child.
func runNSChildIfRequested() {
	if os.Getenv(envRole) != roleNSExec {
		return
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "harness namespaces:", err)
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
	if h := os.Getenv(envHostname); h != "" {
		if err := syscall.Sethostname([]byte(h)); err != nil {
			fail(fmt.Errorf("sethostname %s: %w", h, err))
		}
	}
	if os.Getenv(envLoUp) == "1" {
		if err := loopbackUp(); err != nil {
			fail(err)
		}
	}
	if p := os.Getenv(envNetNS); p != "" {
		// setns applies to the calling thread only; execve keeps that thread's namespaces.
		runtime.LockOSThread()
		if err := joinNetNS(p); err != nil {
			fail(err)
		}
	}
	if len(os.Args) < 2 {
		fail(fmt.Errorf("no command"))
	}
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case envRole, envBinds, envHostname, envLoUp, envNetNS:
		default:
			env = append(env, kv)
		}
	}
	fail(syscall.Exec(os.Args[1], os.Args[1:], env))
}

// loopbackUp sets IFF_UP on lo: a new network namespace starts with it down.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: set flags: %w", err)
	}
	return nil
}

// joinNetNS moves the calling (locked) thread into the network namespace at path.
func joinNetNS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("join netns %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join netns %s: %w", path, err)
	}
	return nil
}
