package registrar_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
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
		vms      = 1000
		ops      = 5000
		budget   = 60 * time.Second // of real time for the random phase
		replicas = 2
	)
	e := newEnv(t)
	e.store = openFileStore(t, t.TempDir())
	e.putGroup(webGroup())
	rigs := []*rig{e.start("gw-a"), e.start("gw-b")}
	rng := rand.New(rand.NewPCG(2026, 5))
	fleet := make([]*churnVM, vms)
	for i := range fleet {
		fleet[i] = &churnVM{ip: fmt.Sprintf("10.%d.%d.1", 1+i/250, i%250), sessions: map[int][]*registrar.Session{}}
	}
	start := time.Now()
	done := 0
	for ; done < ops && time.Since(start) < budget; done++ {
		i := rng.IntN(vms)
		v := fleet[i]
		if v.open() == 0 || rng.IntN(100) < 55 {
			if v.open() == 0 && rng.IntN(100) < 10 {
				v.ip = fmt.Sprintf("10.9.%d.%d", rng.IntN(250), 1+rng.IntN(250)) // back with a new address
			}
			k := rng.IntN(replicas)
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
