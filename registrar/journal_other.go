//go:build !linux

package registrar

import "os"

func fdatasync(f *os.File) error { return f.Sync() }

func syncTree(dir string, dirty map[string]bool) error { return syncEach(dir, dirty) }

func freeSpace(string) (int64, bool) { return 0, false }

// trackFiles: syncTree syncs each file and directory written since the last checkpoint.
const trackFiles = true
