//go:build linux

package registrar_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar/storetest"
)

const fullChildEnv = "EWGATE_TEST_FULL_STORE_DIR"

// TestFileStoreSmallVolumeSIGKILL is what the flood suite's store meets: a small volume that
// fills up while VMs register, and a SIGKILL. A child process writes entries into a store on a
// 1 MiB tmpfs (a quarter taken by a filler) until the volume is full and writes fail, and is
// killed. The store opens again (its journal took at most a sixteenth of the volume, and files
// the replay cannot write are served from the journal), serves every write the child saw
// succeed, and once space returns takes writes and writes every file.
func TestFileStoreSmallVolumeSIGKILL(t *testing.T) {
	if dir := os.Getenv(fullChildEnv); dir != "" {
		writerChild(dir, 4, 2000, true) // until killed, reporting each failure
		return
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs: run it as root (as CI does)")
	}
	vol := filepath.Join(t.TempDir(), "vol")
	if err := os.Mkdir(vol, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", vol, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(vol, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", vol, err)
		}
	})
	filler := filepath.Join(vol, "filler")
	if err := os.WriteFile(filler, make([]byte, 256<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(vol, "store")

	cmd, lines := startChild(t, "TestFileStoreSmallVolumeSIGKILL", fullChildEnv, dir)
	var done, failed []string
	take := func(l string) {
		if name, ok := strings.CutPrefix(l, "done "); ok {
			done = append(done, name)
		} else {
			failed = append(failed, strings.TrimPrefix(l, "fail "))
		}
	}
	deadline := time.After(2 * time.Minute)
	for len(failed) < 20 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("child exited after %d writes and %d failures: %v", len(done), len(failed), cmd.Wait())
			}
			take(l)
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Fatalf("the volume did not fill in 2 minutes: %d writes, %d failures", len(done), len(failed))
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for l := range lines {
		take(l)
	}
	_ = cmd.Wait()
	if !strings.Contains(failed[0], "free space") {
		t.Errorf("a write on the full volume failed with %q: want it to say to free space", failed[0])
	}

	s, logs := openLogged(t, dir)
	t.Logf("%d writes reported done, %d failed, before SIGKILL; recovery %+v; logged %d warnings",
		len(done), len(failed), s.Recovery(), logs.Len())
	for _, name := range done {
		if _, err := s.WorkloadEntries().Get(t.Context(), "ns", name); err != nil {
			t.Fatalf("write reported done before SIGKILL is not served after the restart: %v", err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, ".journal")); err != nil || fi.Size() > (1<<20)/16 {
		t.Errorf("journal %v, %v: want at most a sixteenth of the 1 MiB volume", fi.Size(), err)
	}

	// Space returns: writes work without a restart, and every file is written.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WorkloadEntries().Create(t.Context(), storetest.Entry("ns", "after")); err != nil {
		t.Fatalf("write once space returned: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, _ := openLogged(t, dir)
	if rec := s2.Recovery(); rec.Unwritten != 0 || rec.Damaged != "" {
		t.Errorf("recovery with space: %+v; want every file written", rec)
	}
	for _, name := range append(done, "after") {
		if _, err := os.Stat(entryPath(dir, name)); err != nil {
			t.Fatalf("file of a write reported done: %v", err)
		}
	}
}
