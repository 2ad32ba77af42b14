package sni

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test waits for the goroutines it starts.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
