package harness

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	runNSChildIfRequested()
	code := m.Run()
	RemoveTempRoot()
	os.Exit(code)
}
