//go:build race

package vmcontrol_test

const raceEnabled = true
