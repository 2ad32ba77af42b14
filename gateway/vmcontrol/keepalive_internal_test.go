package vmcontrol

import (
	"encoding/binary"
	"testing"
)

// h2frame builds an HTTP/2 frame (RFC 9113 §4.1) on stream 0.
func h2frame(typ byte, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, 0, 0, 0, 0, 0}
	return append(b, payload...)
}

func goAwayFrame(code uint32, debug string) []byte {
	p := binary.BigEndian.AppendUint32(nil, 7) // last stream ID
	p = binary.BigEndian.AppendUint32(p, code)
	return h2frame(frameTypeGoAway, append(p, debug...))
}

func TestFrameScannerFindsTooManyPingsAcrossWrites(t *testing.T) {
	calm := goAwayFrame(errCodeCalm, tooManyPings)
	cases := []struct {
		name   string
		stream [][]byte
		want   bool
	}{
		{"too_many_pings after other frames", [][]byte{
			h2frame(0x4, make([]byte, 18)),    // SETTINGS
			h2frame(0x0, calm),                // DATA whose payload looks like the GOAWAY: skipped
			h2frame(0x6, make([]byte, 8)),     // PING
			h2frame(0x0, make([]byte, 70000)), // a large DATA frame
			goAwayFrame(0, ""),                // graceful shutdown GOAWAY
			h2frame(0x0, nil),                 // empty frame
			calm,
		}, true},
		{"graceful GOAWAY only", [][]byte{h2frame(0x4, nil), goAwayFrame(0, "graceful")}, false},
		{"ENHANCE_YOUR_CALM for another reason", [][]byte{goAwayFrame(errCodeCalm, "too_many_streams")}, false},
		{"debug data cut short", [][]byte{goAwayFrame(errCodeCalm, "too_many")}, false},
		{"the fake GOAWAY only inside DATA", [][]byte{h2frame(0x0, calm)}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var all []byte
			for _, f := range tc.stream {
				all = append(all, f...)
			}
			for _, chunk := range []int{1, 2, 5, 9, 10, 17, 4096, len(all)} {
				var s frameScanner
				hits := 0
				for b := all; len(b) > 0; {
					n := min(chunk, len(b))
					if calm, _ := s.scan(b[:n]); calm {
						hits++
					}
					b = b[n:]
				}
				if want := map[bool]int{true: 1, false: 0}[tc.want]; hits != want {
					t.Fatalf("writes of %d bytes: %d hits, want %d", chunk, hits, want)
				}
			}
		})
	}
}

func TestFrameScannerCountsHeaderSizeResets(t *testing.T) {
	rst := func(code uint32) []byte { return h2frame(frameTypeRST, binary.BigEndian.AppendUint32(nil, code)) }
	stream := [][]byte{
		h2frame(0x4, make([]byte, 18)),
		rst(errCodeFrameSize),
		h2frame(0x0, rst(errCodeFrameSize)), // inside DATA: skipped
		rst(0x8),                            // CANCEL: not a header reset
		h2frame(0x0, make([]byte, 70000)),
		rst(errCodeFrameSize),
	}
	var all []byte
	for _, f := range stream {
		all = append(all, f...)
	}
	for _, chunk := range []int{1, 3, 9, 13, 4096, len(all)} {
		var s frameScanner
		total := 0
		for b := all; len(b) > 0; {
			n := min(chunk, len(b))
			_, r := s.scan(b[:n])
			total += r
			b = b[n:]
		}
		if total != 2 {
			t.Fatalf("writes of %d bytes: %d FRAME_SIZE resets, want 2", chunk, total)
		}
	}
}
