package vmcontrol

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// frame is one gRPC message as it came off the wire: never decoded, forwarded as is. It holds a
// reference to gRPC's buffers from Unmarshal until Marshal hands them on (gRPC frees them after
// writing), so a message crosses the front without a copy.
type frame struct {
	data mem.BufferSlice
}

func (f *frame) Len() int { return f.data.Len() }

// free releases a frame that is not going to be sent.
func (f *frame) free() {
	if f.data != nil {
		f.data.Free()
		f.data = nil
	}
}

// bytes returns the message contiguously (copying only if it spans several buffers).
func (f *frame) bytes() []byte {
	if len(f.data) == 1 {
		return f.data[0].ReadOnlyData()
	}
	return f.data.Materialize()
}

// replace swaps the message for b.
func (f *frame) replace(b []byte) {
	f.free()
	f.data = mem.BufferSlice{mem.SliceBuffer(b)}
}

// rawCodec is the codec of every stream of the front, both towards VMs and upstreams.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("vmcontrol: codec cannot marshal %T", v)
	}
	out := f.data
	f.data = nil // gRPC owns (and frees) it now
	if out == nil {
		out = mem.BufferSlice{}
	}
	return out, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("vmcontrol: codec cannot unmarshal into %T", v)
	}
	data.Ref()
	f.data = data
	return nil
}
