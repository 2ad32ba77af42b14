package gateway

import (
	"errors"
	"testing"
)

// A reload reads the file until two reads agree: a file caught mid-write (here: first read
// cut short, as a non-atomic write leaves it) is not what is applied.
func TestSettleWaitsForTheWholeFile(t *testing.T) {
	reads := []string{"listeners:\n", "listeners:\n  - {name: mesh", "whole", "whole"}
	i := 0
	got, err := settle(func() ([]byte, error) { i++; return []byte(reads[min(i, len(reads))-1]), nil }, func() {})
	if err != nil || string(got) != "whole" || i != 4 {
		t.Fatalf("settle = %q, %v after %d reads; want \"whole\" after 4", got, err, i)
	}
	i = 0
	_, err = settle(func() ([]byte, error) { i++; return []byte{byte(i)}, nil }, func() {})
	if !errors.Is(err, errUnsettled) || i != 11 {
		t.Fatalf("a file that never settles: %v after %d reads; want errUnsettled after 11", err, i)
	}
	// An empty file is one caught between truncation and write: never applied, however often
	// it is read empty (the flood suite's reload storm read it empty twice, 50 ms apart, and
	// the empty config closed the mesh listener).
	reads = []string{"", "", "whole", "whole"}
	i = 0
	got, err = settle(func() ([]byte, error) { i++; return []byte(reads[min(i, len(reads))-1]), nil }, func() {})
	if err != nil || string(got) != "whole" || i != 4 {
		t.Fatalf("settle = %q, %v after %d reads; want \"whole\" after 4", got, err, i)
	}
	i = 0
	if _, err = settle(func() ([]byte, error) { i++; return nil, nil }, func() {}); !errors.Is(err, errEmpty) || i != 11 {
		t.Fatalf("a file that stays empty: %v after %d reads; want errEmpty after 11", err, i)
	}
	boom := errors.New("gone")
	if _, err := settle(func() ([]byte, error) { return nil, boom }, func() {}); !errors.Is(err, boom) {
		t.Fatalf("read error: %v; want it returned", err)
	}
}
