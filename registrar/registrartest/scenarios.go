package registrartest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
)

// Handover: a VM connected to replica A connects to replica B too; B's newer stream takes the
// entry over (same object: UID kept, never deleted); A's stream ends and B keeps it connected
// through a whole grace period; B's stream ends and the entry is deleted after the grace period.
func Handover(t *testing.T, o Options) {
	o.defaults()
	ns := o.Namespace
	PutGroup(t, o)
	a := StartReplica(t, o, o.Stores[0], "gw-a")
	b := StartReplica(t, o, o.Stores[1], "gw-b")
	name := EntryName("10.0.0.1")
	sa := a.Connect(t, Request(ns, 1, "10.0.0.1"))
	Registered(t, o.Timeout, sa)
	first := entry(t, o.Stores[0], ns, name)
	if owner(first) != "gw-a" || !connected(first) {
		t.Fatalf("after connecting to gw-a: %+v", first)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := o.Stores[0].WorkloadEntries().Watch(ctx, ns, first.ResourceVersion)
	if err != nil {
		t.Fatal(err)
	}
	sb := b.Connect(t, Request(ns, 1, "10.0.0.1"))
	Registered(t, o.Timeout, sb)
	Eventually(t, o.Timeout, "entry owned by gw-b", func() bool { return owner(entry(t, o.Stores[0], ns, name)) == "gw-b" })
	sa.Close()
	// Through a whole grace period and a sweep the entry stays gw-b's and connected.
	Throughout(GracePeriod+1500*time.Millisecond, 50*time.Millisecond, func() {
		e := entry(t, o.Stores[0], ns, name)
		if e == nil || e.UID != first.UID || owner(e) != "gw-b" || !connected(e) {
			t.Fatalf("during the handover: %+v", e)
		}
		drain(t, events, name)
	})
	sb.Close()
	Eventually(t, o.Timeout, "entry deleted after gw-b's stream ended", func() bool { return entry(t, o.Stores[0], ns, name) == nil })
	o.Logf("handover: entry %s kept its UID through the move; deleted after the last stream", name)
}

// drain reads the events ready on ch and fails on a deletion of name.
func drain(t *testing.T, ch <-chan registrar.Event[*registrar.WorkloadEntry], name string) {
	t.Helper()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return
			}
			if ev.Type == registrar.Deleted && ev.Object.Name == name {
				t.Fatalf("entry %s deleted during the handover", name)
			}
		default:
			return
		}
	}
}

// KilledReplica: replica A registers three VMs and dies without disconnecting them (its Run
// ends, no disconnectedAt). VM 1 reconnects to B and is taken over at once (newer stream); B
// also held an older stream of VM 3 and takes it over once A's Lease has expired; VM 2, gone
// with A, is deleted after the grace period. It returns how long the collection took after the
// kill.
func KilledReplica(t *testing.T, o Options) time.Duration {
	o.defaults()
	ns := o.Namespace
	PutGroup(t, o)
	a := StartReplica(t, o, o.Stores[0], "gw-a")
	b := StartReplica(t, o, o.Stores[1], "gw-b")
	older := Request(ns, 3, "10.0.0.3")
	older.Time = time.Now().Add(-time.Minute)
	for i := 1; i <= 3; i++ {
		Registered(t, o.Timeout, a.Connect(t, Request(ns, i, fmt.Sprintf("10.0.0.%d", i))))
	}
	Registered(t, o.Timeout, b.Connect(t, older)) // written by a: the entry already names gw-a, newer
	if got := owner(entry(t, o.Stores[1], ns, EntryName("10.0.0.3"))); got != "gw-a" {
		t.Fatalf("VM 3's older stream at gw-b took the entry from gw-a's newer one: owner %q", got)
	}
	a.Stop()
	killed := time.Now()
	Registered(t, o.Timeout, b.Connect(t, Request(ns, 1, "10.0.0.1")))
	Eventually(t, o.Timeout, "VM 1 taken over by gw-b", func() bool {
		return owner(entry(t, o.Stores[1], ns, EntryName("10.0.0.1"))) == "gw-b"
	})
	Eventually(t, o.Timeout, "gw-a's entries collected", func() bool {
		e1, e3 := entry(t, o.Stores[1], ns, EntryName("10.0.0.1")), entry(t, o.Stores[1], ns, EntryName("10.0.0.3"))
		return entry(t, o.Stores[1], ns, EntryName("10.0.0.2")) == nil &&
			owner(e1) == "gw-b" && connected(e1) && owner(e3) == "gw-b" && connected(e3)
	})
	took := time.Since(killed)
	if took < LeaseDuration-time.Second {
		t.Fatalf("gw-a's entries collected %s after the kill, before its %s Lease could expire", took, LeaseDuration)
	}
	o.Logf("killed replica: its entries collected %s after the kill (lease %s, grace %s)", took.Round(10*time.Millisecond), LeaseDuration, GracePeriod)
	return took
}

// ChurnOptions size a churn.
type ChurnOptions struct {
	VMs    int           // fleet size; if zero, 200
	Ops    int           // random connects and closes; if zero, 5 x VMs
	Budget time.Duration // real time for the random phase; if zero, 60 s
	// Rate paces the operations (per second), so that writes, watch events, grace periods and
	// Lease renewals interleave with them. If zero, 100.
	Rate int
	Seed uint64
}

// ChurnResult is what a churn did and what the store must hold.
type ChurnResult struct {
	Ops       int
	Connected []string // entry names of the VMs connected at the end, sorted
	Random    time.Duration
	Converged time.Duration
}

type churnVM struct {
	ip       string
	sessions [2][]*registrar.Session
}

func (v *churnVM) open() int { return len(v.sessions[0]) + len(v.sessions[1]) }

// Churn: VMs connect and disconnect at random, sometimes twice at once, sometimes to both
// replicas, sometimes back with a new address. At the end the store holds exactly one
// connected entry per VM still connected, owned by a replica holding one of its streams, and
// nothing else; and it stays so through a grace period and a sweep.
func Churn(t *testing.T, o Options, c ChurnOptions) ChurnResult {
	o.defaults()
	if c.VMs <= 0 {
		c.VMs = 200
	}
	if c.Ops <= 0 {
		c.Ops = 5 * c.VMs
	}
	if c.Budget <= 0 {
		c.Budget = 60 * time.Second
	}
	if c.Rate <= 0 {
		c.Rate = 100
	}
	PutGroup(t, o)
	rigs := [2]*Replica{StartReplica(t, o, o.Stores[0], "gw-a"), StartReplica(t, o, o.Stores[1], "gw-b")}
	fleet := make([]*churnVM, c.VMs)
	for i := range fleet {
		fleet[i] = &churnVM{ip: fmt.Sprintf("10.%d.%d.1", 1+i/250, i%250)}
	}
	rng := rand.New(rand.NewPCG(c.Seed, 5))
	start := time.Now()
	res := ChurnResult{}
	moved := 0
	pace := time.NewTicker(time.Second / time.Duration(c.Rate))
	defer pace.Stop()
	for ; res.Ops < c.Ops && time.Since(start) < c.Budget; res.Ops++ {
		<-pace.C
		i := rng.IntN(len(fleet))
		v := fleet[i]
		if v.open() == 0 || rng.IntN(100) < 55 {
			if v.open() == 0 && rng.IntN(100) < 10 {
				v.ip = fmt.Sprintf("10.9.%d.%d", moved/250, 1+moved%250) // back with a new address
				moved++
			}
			k := rng.IntN(2)
			v.sessions[k] = append(v.sessions[k], rigs[k].Connect(t, Request(o.Namespace, i, v.ip)))
		} else {
			closeRandom(rng, v)
		}
	}
	res.Random = time.Since(start)
	want := map[string]*churnVM{}
	for _, v := range fleet {
		if v.open() > 0 {
			want[EntryName(v.ip)] = v
			res.Connected = append(res.Connected, EntryName(v.ip))
		}
	}
	slices.Sort(res.Connected)
	settled := time.Now()
	var last string
	Eventually(t, o.Timeout, "store matches the fleet", func() bool {
		last = churnDiff(t, o, want, rigs)
		return last == ""
	})
	res.Converged = time.Since(settled)
	Throughout(GracePeriod+1500*time.Millisecond, 100*time.Millisecond, func() {
		if d := churnDiff(t, o, want, rigs); d != "" {
			t.Fatalf("after converging: %s", d)
		}
	})
	o.Logf("churn: %d VMs, %d operations in %s, %d connected at the end, converged in %s",
		c.VMs, res.Ops, res.Random.Round(time.Millisecond), len(res.Connected), res.Converged.Round(time.Millisecond))
	return res
}

func closeRandom(rng *rand.Rand, v *churnVM) {
	var ks []int
	for k, ss := range v.sessions {
		if len(ss) > 0 {
			ks = append(ks, k)
		}
	}
	k := ks[rng.IntN(len(ks))]
	ss := v.sessions[k]
	j := rng.IntN(len(ss))
	ss[j].Close()
	v.sessions[k] = slices.Delete(ss, j, j+1)
}

func churnDiff(t *testing.T, o Options, want map[string]*churnVM, rigs [2]*Replica) string {
	list, _, err := o.Stores[0].WorkloadEntries().List(context.Background(), o.Namespace, registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var leaked, bad []string
	seen := 0
	for _, x := range list {
		v, ok := want[x.Name]
		if !ok {
			leaked = append(leaked, x.Name)
			continue
		}
		seen++
		k := slices.IndexFunc(rigs[:], func(g *Replica) bool { return g.Instance() == owner(x) })
		if !connected(x) || k < 0 || len(v.sessions[k]) == 0 {
			bad = append(bad, x.Name)
		}
	}
	if len(leaked)+len(bad) == 0 && seen == len(want) {
		return ""
	}
	return fmt.Sprintf("%d leaked %.5v, %d missing, %d disconnected or owned by a replica without a stream %.5v",
		len(leaked), leaked, len(want)-seen, len(bad), bad)
}

// RegisterRate connects n VMs to one replica on store, conc at a time, each counted when its
// entry is written, and returns registrations per second. The VMs stay connected.
func RegisterRate(tb testing.TB, o Options, store registrar.Store, instance string, first, n, conc int) float64 {
	o.defaults()
	g := StartReplica(tb, o, store, instance)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	errs := make(chan error, conc)
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				j := first + i
				s, err := g.Registrar.Connect(context.Background(), Request(o.Namespace, j, fmt.Sprintf("10.%d.%d.%d", 100+j>>16&0xff, j>>8&0xff, j&0xff)))
				if err != nil {
					errs <- err
					return
				}
				timer := time.NewTimer(o.Timeout)
				select {
				case <-s.Registered():
				case <-timer.C:
					errs <- fmt.Errorf("registration %d not written within %s", j, o.Timeout)
				}
				timer.Stop()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
	return float64(n) / elapsed.Seconds()
}
