package harness

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	runMountNSIfRequested()
	code := m.Run()
	RemoveTempRoot()
	os.Exit(code)
}
