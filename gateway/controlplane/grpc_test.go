package controlplane_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/xds" // the xds:/// resolver and balancers, as a proxyless VM has them
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/controlplane"
	"github.com/ewgate/ewgate/registrar"
)

const clientEnv = "EWGATE_TEST_PROXYLESS_TARGET"

func TestMain(m *testing.M) {
	if target := os.Getenv(clientEnv); target != "" {
		os.Exit(proxylessClient(target))
	}
	goleak.VerifyTestMain(m)
}

const whoMethod = "/ewgate.test.Who/Name"

// proxylessClient is the re-executed test binary: grpc reads GRPC_XDS_BOOTSTRAP at start-up, so
// the bootstrap has to be in the environment of a process of its own (peers.md). It calls the
// service until its stdin closes (or a minute passes) and prints the backend of each call.
func proxylessClient(target string) int {
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	defer cc.Close()
	stop := make(chan struct{})
	go func() { bufio.NewReader(os.Stdin).ReadString('\n'); close(stop) }()
	deadline := time.After(time.Minute)
	tick := time.NewTicker(10 * time.Millisecond) // a pace, not a wait for a condition
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return 0
		case <-deadline:
			return 2
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		out := &wrapperspb.StringValue{}
		err := cc.Invoke(ctx, whoMethod, &emptypb.Empty{}, out)
		cancel()
		if err != nil {
			fmt.Println("ERR", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Println(out.GetValue())
	}
}

// whoServer is a gRPC backend that answers with its name.
func whoServer(t *testing.T, name string) uint32 {
	t.Helper()
	gs := grpc.NewServer()
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: "ewgate.test.Who",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Name", Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(&emptypb.Empty{}); err != nil {
				return nil, err
			}
			return wrapperspb.String(name), nil
		}}},
	}, struct{}{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return uint32(ln.Addr().(*net.TCPAddr).Port)
}

func TestProxylessGRPCClientResolvesAndFollowsWorkloads(t *testing.T) {
	portA, portB := whoServer(t, "a"), whoServer(t, "b")
	store := registrar.NewMemoryStore()
	entries := store.WorkloadEntries()
	ctx := context.Background()
	for name, port := range map[string]uint32{"echo-a": portA, "echo-b": portB} {
		e := &registrar.WorkloadEntry{ObjectMeta: registrar.ObjectMeta{Name: name, Namespace: "default"},
			Spec: registrar.WorkloadEntrySpec{Address: "127.0.0.1", Ports: map[string]uint32{"grpc": port}, Labels: map[string]string{"app": "echo"}, Locality: "r1/z1"}}
		if _, err := entries.Create(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	f, err := config.Parse([]byte(`services:
  - name: echo
    hosts: [echo.default.svc.cluster.local]
    ports: [{number: 7070, name: grpc, protocol: GRPC}]
    workload_selector: {labels: {app: echo}}
  # A second service: grpc-go subscribes to the names it dials only, so the server must answer
  # a request naming a subset of what it has (a go-control-plane ADS-mode cache never does).
  - name: other
    hosts: [other.default.svc.cluster.local]
    ports: [{number: 7071, name: grpc, protocol: GRPC}]
    endpoints: [{address: 127.0.0.1, ports: {grpc: 1}}]
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := controlplane.New(controlplane.Options{Services: f.Services, Entries: entries, Debounce: 5 * time.Millisecond, MaxDelay: 50 * time.Millisecond})
	cctx, cancel := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(cctx, ln) }()
	t.Cleanup(func() { cancel(); <-runDone })

	dir := t.TempDir()
	bootstrap, _ := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{"server_uri": ln.Addr().String(), "channel_creds": []any{map[string]any{"type": "insecure"}}, "server_features": []string{"xds_v3"}}},
		"node":        map[string]any{"id": "sidecar~127.0.0.1~vm-1.default~default.svc.cluster.local", "locality": map[string]any{"region": "r1"}},
	})
	bpath := filepath.Join(dir, "bootstrap.json")
	if err := os.WriteFile(bpath, bootstrap, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"=echo.default.svc.cluster.local:7070", "GRPC_XDS_BOOTSTRAP="+bpath)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	exited := false
	defer func() {
		stdin.Close()
		if !exited {
			waitOrKill(t, cmd)
		}
		if t.Failed() {
			t.Logf("client stderr:\n%s", stderr.String())
		}
	}()
	var last []string
	read := func(what string, until func(line string) bool) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("%s: client exited; last lines %q", what, last)
				}
				last = append(last, l)
				if len(last) > 10 {
					last = last[1:]
				}
				if until(l) {
					return
				}
			case <-deadline:
				t.Fatalf("%s: timed out; last lines %q", what, last)
			}
		}
	}
	seen := map[string]bool{}
	read("both workloads reached", func(l string) bool { seen[l] = true; return seen["a"] && seen["b"] })

	if err := entries.Delete(ctx, "default", "echo-a", registrar.Preconditions{}); err != nil {
		t.Fatal(err)
	}
	run := 0
	read("the workload that went away is no longer used", func(l string) bool {
		if l == "b" {
			run++
		} else {
			run = 0
		}
		return run >= 30
	})
	stdin.Close()
	waitOrKill(t, cmd)
	exited = true
}

// waitOrKill waits for the client to exit, killing it by its PID after a deadline.
func waitOrKill(t *testing.T, cmd *exec.Cmd) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Error("proxyless client did not exit; killed")
	}
}
