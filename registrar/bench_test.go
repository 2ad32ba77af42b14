package registrar_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
)

// BenchmarkRegister measures registrations per second against the file store: a VM connects
// and the benchmark waits until its entry is on disk (synced). Sequential: one VM at a time, the
// latency of one registration; parallel: 64 VMs connecting at once, the throughput of the
// registrar's workers sharing the store.
func BenchmarkRegister(b *testing.B) {
	b.Run("file/sequential", func(b *testing.B) { benchRegister(b, 1) })
	b.Run("file/parallel64", func(b *testing.B) { benchRegister(b, 64) })
}

func benchRegister(b *testing.B, conc int) {
	s, err := registrar.OpenFileStore(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.WorkloadGroups().Create(context.Background(), webGroup()); err != nil {
		b.Fatal(err)
	}
	r, err := registrar.New(registrar.Config{Instance: "gw-bench"}, registrar.Options{Store: s})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var workers sync.WaitGroup
	for range conc {
		workers.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				req := request(i, fmt.Sprintf("10.%d.%d.%d", 100+i>>16&0xff, i>>8&0xff, i&0xff))
				sess, err := r.Connect(ctx, req)
				if err != nil {
					b.Error(err)
					return
				}
				<-sess.Registered()
			}
		})
	}
	workers.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "regs/s")
}
