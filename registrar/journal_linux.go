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
