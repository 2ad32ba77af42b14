package registrar_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/storetest"
)

// churnVM is the test's own account of one VM: its address and its open streams per replica.
type churnVM struct {
	ip       string
	sessions map[int][]*registrar.Session // replica index -> open streams
}

func (v *churnVM) open() int {
	n := 0
	for _, ss := range v.sessions {
		n += len(ss)
	}
	return n
}

// TestChurn: 1,000 VMs connect and disconnect at random, sometimes twice at once, sometimes to
// both replicas, sometimes back with a new address, while fake time runs through grace periods.
// At the end the file store holds exactly one connected entry per VM still connected, owned by
// a replica that holds one of its streams, and nothing else. Seeded: a failure replays.
func TestChurn(t *testing.T) {
	const (
		vms    = 1000
		ops    = 5000
		budget = 60 * time.Second // of real time for the random phase
	)
	e := newEnv(t)
	e.store = openFileStore(t, t.TempDir())
	e.putGroup(webGroup())
	rigs := []*rig{e.start("gw-a"), e.start("gw-b")}
	fleet := make([]*churnVM, vms)
	for i := range fleet {
		fleet[i] = &churnVM{ip: fmt.Sprintf("10.%d.%d.1", 1+i/250, i%250), sessions: map[int][]*registrar.Session{}}
	}
	start := time.Now()
	done := churnOps(t, e, rigs, fleet, ops, budget)
	connected := 0
	for _, v := range fleet {
		if v.open() > 0 {
			connected++
		}
	}
	t.Logf("churn: %d operations in %s, %d of %d VMs connected at the end", done, time.Since(start).Round(time.Millisecond), connected, vms)
	if done < 1000 {
		t.Fatalf("only %d operations within %s", done, budget)
	}
	settled := time.Now()
	for passed := time.Duration(0); ; passed += time.Second {
		d := churnDiff(t, e, fleet, rigs)
		if d == "" {
			break
		}
		if passed > 5*time.Minute || time.Since(settled) > time.Minute {
			t.Fatalf("after %s of fake time: %s", passed, d)
		}
		e.advance(time.Second, time.Second, rigs...)
	}
	t.Logf("churn: converged in %s", time.Since(settled).Round(time.Millisecond))
	e.advance(time.Minute, time.Second, rigs...) // and it stays so
	if d := churnDiff(t, e, fleet, rigs); d != "" {
		t.Fatal(d)
	}
}

// churnOps runs up to ops random connects and closes (seeded), within budget of real time.
func churnOps(t *testing.T, e *env, rigs []*rig, fleet []*churnVM, ops int, budget time.Duration) int {
	rng := rand.New(rand.NewPCG(2026, 5))
	start := time.Now()
	done, moved := 0, 0
	for ; done < ops && time.Since(start) < budget; done++ {
		i := rng.IntN(len(fleet))
		v := fleet[i]
		if v.open() == 0 || rng.IntN(100) < 55 {
			if v.open() == 0 && rng.IntN(100) < 10 {
				v.ip = fmt.Sprintf("10.9.%d.%d", moved/250, 1+moved%250) // back with a new address
				moved++
			}
			k := rng.IntN(len(rigs))
			v.sessions[k] = append(v.sessions[k], rigs[k].connect(t, request(i, v.ip)))
		} else {
			closeRandom(rng, v)
		}
		if rng.IntN(20) == 0 {
			e.clock.Advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
		}
		if done%100 == 99 { // let writes land between bursts, so later events meet written entries
			for _, g := range rigs {
				g.settle(t)
			}
		}
	}
	return done
}

func closeRandom(rng *rand.Rand, v *churnVM) {
	var ks []int
	for k, ss := range v.sessions {
		if len(ss) > 0 {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	k := ks[rng.IntN(len(ks))]
	ss := v.sessions[k]
	j := rng.IntN(len(ss))
	ss[j].Close()
	v.sessions[k] = slices.Delete(ss, j, j+1)
}

// churnDiff compares the store with the fleet; "" when they agree.
func churnDiff(t *testing.T, e *env, fleet []*churnVM, rigs []*rig) string {
	list, _, err := e.store.WorkloadEntries().List(t.Context(), ns, registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*churnVM{}
	for _, v := range fleet {
		if v.open() > 0 {
			want[registrar.EntryName("web", netip.MustParseAddr(v.ip), "vm-net")] = v
		}
	}
	var leaked, bad []string
	for _, x := range list {
		v, ok := want[x.Name]
		if !ok {
			leaked = append(leaked, x.Name)
			continue
		}
		delete(want, x.Name)
		owner := slices.IndexFunc(rigs, func(g *rig) bool {
			return g.Instance() == x.Annotations[registrar.AnnotationWorkloadController]
		})
		if x.Annotations[registrar.AnnotationDisconnectedAt] != "" || owner < 0 || len(v.sessions[owner]) == 0 {
			bad = append(bad, x.Name)
		}
	}
	if len(leaked)+len(want)+len(bad) == 0 {
		return ""
	}
	var missing []string
	for name := range want {
		missing = append(missing, name)
	}
	slices.Sort(missing)
	detail := ""
	for _, g := range rigs {
		for _, reg := range g.Registrations() {
			if len(missing) > 0 && reg.Entry == missing[0] {
				detail += fmt.Sprintf("\n%s: %+v", g.Instance(), reg)
			}
		}
	}
	return fmt.Sprintf("%d leaked %v, %d missing %v, %d disconnected or owned by a replica without a stream %v%s",
		len(leaked), first(leaked), len(missing), first(missing), len(bad), first(bad), detail)
}

func first(names []string) []string {
	return names[:min(5, len(names))]
}

// BenchmarkRegister measures registrations per second against the file store: a VM connects
// and the benchmark waits until its entry is durable (in the store's synced journal; its YAML
// file follows: files-pending says how many were not written yet when the timer stopped). Sequential: one VM at a time, the
// latency of one registration; parallel: 64 VMs connecting at once, the throughput of the
// registrar's workers sharing the store. The registered10000 cases start with 10,000 entries
// of other VMs in the store (in the memory store: a file store would take minutes to fill).
func BenchmarkRegister(b *testing.B) {
	file := func(b *testing.B) registrar.Store {
		s, err := registrar.OpenFileStore(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		return s
	}
	mem := func(*testing.B) registrar.Store { return registrar.NewMemoryStore() }
	b.Run("file/sequential", func(b *testing.B) { benchRegister(b, file(b), 1, 0) })
	b.Run("file/parallel64", func(b *testing.B) { benchRegister(b, file(b), 64, 0) })
	b.Run("memory/registered10000/sequential", func(b *testing.B) { benchRegister(b, mem(b), 1, 10000) })
	b.Run("memory/registered10000/parallel64", func(b *testing.B) { benchRegister(b, mem(b), 64, 10000) })
}

func benchRegister(b *testing.B, s registrar.Store, conc, registered int) {
	if _, err := s.WorkloadGroups().Create(context.Background(), webGroup()); err != nil {
		b.Fatal(err)
	}
	for i := range registered {
		e := storetest.Entry(ns, fmt.Sprintf("other-%d", i))
		e.Labels[registrar.LabelVM] = fmt.Sprintf("%032x", i)
		if _, err := s.WorkloadEntries().Create(context.Background(), e); err != nil {
			b.Fatal(err)
		}
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
	if fs, ok := s.(*registrar.FileStore); ok {
		b.ReportMetric(float64(fs.FilesQueued()), "files-pending")
	}
}
