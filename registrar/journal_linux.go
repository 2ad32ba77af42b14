package registrar

import (
	"os"

	"golang.org/x/sys/unix"
)

func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// syncTree syncs the whole filesystem holding dir with one syncfs(2): cheaper than a sync per
// file written since the last checkpoint.
func syncTree(dir string, _ map[string]bool) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = unix.Syncfs(int(d.Fd()))
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// freeSpace is the space an unprivileged writer still has on dir's volume.
func freeSpace(dir string) (int64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}

// trackFiles: syncTree syncs the whole filesystem, so the writer need not note what it wrote.
const trackFiles = false
