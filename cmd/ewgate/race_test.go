//go:build race

package main

// raceEnabled: the tests run under the race detector, so TestMain builds the binary with it too.
const raceEnabled = true
