package registrar_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/storetest"
)

// TestFileStoreJournalReplay: a write reported done whose YAML file never reached the disk (the
// process died between the journal's sync and the rename) is brought back at open.
func TestFileStoreJournalReplay(t *testing.T) {
	dir := t.TempDir()
	s, err := registrar.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.WorkloadEntries().Create(t.Context(), storetest.Entry("ns", "a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "workloadentries", "ns", "a.yaml")); err != nil {
		t.Fatal(err)
	}
	s2 := openFileStore(t, dir)
	got, err := s2.WorkloadEntries().Get(t.Context(), "ns", "a")
	if err != nil {
		t.Fatalf("journaled write lost: %v", err)
	}
	if got.UID != a.UID || got.ResourceVersion != a.ResourceVersion {
		t.Fatalf("replayed %+v, wrote %+v", got.ObjectMeta, a.ObjectMeta)
	}
	if _, err := os.Stat(filepath.Join(dir, "workloadentries", "ns", "a.yaml")); err != nil {
		t.Fatalf("replay did not write the file back: %v", err)
	}
}

// TestFileStoreJournalWraps: with a journal of a few records, writes cross many checkpoints
// (and concurrent writes share syncs); after a restart every object has its last content and
// deleted ones stay deleted.
func TestFileStoreJournalWraps(t *testing.T) {
	defer registrar.SetJournalSize(4096)()
	dir := t.TempDir()
	s, err := registrar.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	es := s.WorkloadEntries()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 20 {
				name := fmt.Sprintf("vm-%d-%d", w, i)
				e, err := es.Create(t.Context(), storetest.Entry("ns", name))
				if err != nil {
					t.Error(err)
					return
				}
				e.Spec.Address = fmt.Sprintf("10.1.%d.%d", w, i)
				if _, err := es.Update(t.Context(), e); err != nil {
					t.Error(err)
					return
				}
				if i%4 == 0 {
					if err := es.Delete(t.Context(), "ns", name, registrar.Preconditions{}); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openFileStore(t, dir)
	list, _, err := s2.WorkloadEntries().List(t.Context(), "ns", registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 8*15 {
		t.Fatalf("%d entries after restart, want %d", len(list), 8*15)
	}
	for _, e := range list {
		var w, i int
		if _, err := fmt.Sscanf(e.Name, "vm-%d-%d", &w, &i); err != nil || i%4 == 0 {
			t.Fatalf("unexpected entry %s", e.Name)
		}
		if want := fmt.Sprintf("10.1.%d.%d", w, i); e.Spec.Address != want {
			t.Fatalf("%s: address %q, want the last write's %q", e.Name, e.Spec.Address, want)
		}
	}
}

const crashDirEnv = "EWGATE_TEST_CRASH_STORE_DIR"

// TestFileStoreSurvivesSIGKILL: a child process writes entries from 8 goroutines and prints each
// name once Create has returned; it is killed with SIGKILL mid-stream. Every name it printed is in
// the store when it is opened again.
func TestFileStoreSurvivesSIGKILL(t *testing.T) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		writerChild(dir, 8, 100000/8, false) // until killed
		return
	}
	dir := t.TempDir()
	cmd, lines := startChild(t, "TestFileStoreSurvivesSIGKILL", crashDirEnv, dir)
	var done []string
	deadline := time.After(2 * time.Minute)
	for len(done) < 500 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("child exited after %d writes: %v", len(done), cmd.Wait())
			}
			done = append(done, strings.TrimPrefix(l, "done "))
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("child reported only %d writes in 2 minutes", len(done))
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for l := range lines { // what it printed before dying
		done = append(done, strings.TrimPrefix(l, "done "))
	}
	_ = cmd.Wait()
	s := openFileStore(t, dir)
	for _, name := range done {
		if _, err := s.WorkloadEntries().Get(t.Context(), "ns", name); err != nil {
			t.Fatalf("write reported done before SIGKILL is lost (%d reported): %v", len(done), err)
		}
	}
	t.Logf("%d writes reported done before SIGKILL, all present after reopening", len(done))
}

// startChild runs test of this test binary as a child process, with env set to dir, and returns
// it with the lines it prints (the channel is closed when its output ends).
func startChild(t *testing.T, test, env, dir string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), env+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return cmd, lines
}

// writerChild is a child process of a crash test: it writes entries from writers goroutines
// (perWriter each) until killed, printing "done NAME" once a write has returned. A failed write
// ends it with status 2, unless reportFailures: then it prints "fail ERROR" and goes on (a
// name that exists already is not reported).
func writerChild(dir string, writers, perWriter int, reportFailures bool) {
	s, err := registrar.OpenFileStore(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				name := fmt.Sprintf("vm-%d-%d", w, i)
				_, err := s.WorkloadEntries().Create(context.Background(), storetest.Entry("ns", name))
				if err != nil && !reportFailures {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(2)
				}
				mu.Lock()
				if err == nil {
					fmt.Printf("done %s\n", name)
				} else if !errors.Is(err, registrar.ErrAlreadyExists) {
					fmt.Printf("fail %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	os.Exit(0)
}

// TestListByVMLabel: a List selecting on LabelVM (served from an index) follows creates, label
// changes, deletes and a restart, and still applies the other selectors and the namespace.
func TestListByVMLabel(t *testing.T) {
	dir := t.TempDir()
	s := openFileStore(t, dir)
	es := s.WorkloadEntries()
	count := func(es registrar.Resource[*registrar.WorkloadEntry], ns, vm string, more map[string]string) int {
		sel := map[string]string{registrar.LabelVM: vm}
		for k, v := range more {
			sel[k] = v
		}
		list, _, err := es.List(t.Context(), ns, registrar.ListOptions{LabelSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		return len(list)
	}
	for i, ns := range []string{"ns", "ns", "other"} {
		e := storetest.Entry(ns, fmt.Sprintf("e%d", i))
		e.Labels[registrar.LabelVM] = "a"
		if _, err := es.Create(t.Context(), e); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(es, "ns", "a", nil); n != 2 {
		t.Fatalf("vm a in ns: %d entries, want 2", n)
	}
	if n := count(es, "", "a", nil); n != 3 {
		t.Fatalf("vm a everywhere: %d entries, want 3", n)
	}
	if n := count(es, "", "a", map[string]string{"app": "db"}); n != 0 {
		t.Fatalf("vm a with app=db: %d entries, want 0", n)
	}
	e, err := es.Get(t.Context(), "ns", "e0")
	if err != nil {
		t.Fatal(err)
	}
	e.Labels[registrar.LabelVM] = "b"
	if _, err := es.Update(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	if err := es.Delete(t.Context(), "ns", "e1", registrar.Preconditions{}); err != nil {
		t.Fatal(err)
	}
	if a, b := count(es, "ns", "a", nil), count(es, "ns", "b", nil); a != 0 || b != 1 {
		t.Fatalf("after relabel and delete: vm a %d, vm b %d; want 0 and 1", a, b)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openFileStore(t, dir)
	if a, b := count(s2.WorkloadEntries(), "", "a", nil), count(s2.WorkloadEntries(), "", "b", nil); a != 1 || b != 1 {
		t.Fatalf("after restart: vm a %d, vm b %d; want 1 and 1", a, b)
	}
}
