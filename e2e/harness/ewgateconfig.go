package harness

import (
	"os"
)

// ConfigPath is the file ewgate was started with.
func (e *Ewgate) ConfigPath() string { return e.config }

// RewriteConfig replaces ewgate's config file atomically (a new file renamed over it), so its
// file watcher never reads half a file. ewgate reloads it on its own.
func (e *Ewgate) RewriteConfig(config string) error {
	tmp := e.ConfigPath() + ".new"
	if err := os.WriteFile(tmp, []byte(config), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, e.ConfigPath())
}
