package splice

// Accepting is balanced over the loops. A loop keeps every connection it accepts (it serves it
// there to the end), and EPOLLEXCLUSIVE does not choose among loops whose epoll sets Go's
// netpoller watches (no thread waits on them directly), so every loop wakes and the one that
// runs first takes the connection: left alone, nearly every connection lands on one loop, and
// one core relays them all. So a loop that owns more pairs than the least loaded loop, by more
// than the slack, steps back: its listening sockets leave its epoll set, once the least loaded
// loop has them in its own. A loop steps forward again when another steps back in its favour.
// Nothing is done per connection while the balance holds, and a loop that steps back is no
// longer woken by every connection.

// slack is how many pairs a loop owning n may own beyond the least loaded loop.
func slack(n int32) int32 { return 4 + n/8 }

// balance runs on l after it accepted connections, and steps l back when it is ahead.
func (l *loop) balance() {
	e := l.e
	if len(e.loops) < 2 || e.behind(l) == nil {
		return
	}
	e.balanceMu.Lock() // one change of the balance at a time: some loop always accepts
	defer e.balanceMu.Unlock()
	if least := e.behind(l); least != nil && least.setBack(false) {
		l.setBack(true)
	}
}

// behind returns the least loaded loop when l owns more pairs than it by more than the slack,
// nil otherwise.
func (e *Engine) behind(l *loop) *loop {
	least := e.loops[0]
	for _, x := range e.loops[1:] {
		if x.owned.Load() < least.owned.Load() {
			least = x
		}
	}
	if n := l.owned.Load(); n > least.owned.Load()+slack(n) {
		return least
	}
	return nil
}

// setBack steps l back from accepting (back) or forward, and reports whether l is now where it
// was asked to be. A loop that cannot register a listening socket again does not step forward.
func (l *loop) setBack(back bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.back == back {
		return true
	}
	if l.stopped {
		return back
	}
	for i, a := range l.lns {
		if a == nil || a.closed.Load() {
			continue
		}
		if back {
			l.disarmAcceptor(a)
		} else if err := l.armAcceptor(int32(i), a); err != nil {
			for _, b := range l.lns[:i] { // all or none
				if b != nil && !b.closed.Load() {
					l.disarmAcceptor(b)
				}
			}
			return false
		}
	}
	l.back = back
	return true
}
