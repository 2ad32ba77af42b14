package splice

// expire ends the pairs idle for their timeout. Activity does not touch the heap; an entry
// that comes due for a pair that moved bytes since is pushed back to its new deadline.
func (l *loop) expire() {
	for len(l.timers) > 0 && l.timers[0].due <= l.now {
		p := l.timers[0]
		if p.last+p.idle <= l.now {
			l.end(p, IdleTimeout, nil)
			continue
		}
		p.due = p.last + p.idle
		l.down(0)
	}
}

// The idle heap: a binary min-heap on due, each pair knowing its index.

func (l *loop) push(p *Pair) {
	p.hidx = int32(len(l.timers))
	l.timers = append(l.timers, p)
	l.up(int(p.hidx))
}

func (l *loop) remove(p *Pair) {
	i, last := int(p.hidx), len(l.timers)-1
	if i != last {
		l.swap(i, last)
	}
	l.timers[last] = nil
	l.timers = l.timers[:last]
	p.hidx = -1
	if i != last {
		l.down(i)
		l.up(i)
	}
}

func (l *loop) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if l.timers[parent].due <= l.timers[i].due {
			return
		}
		l.swap(i, parent)
		i = parent
	}
}

func (l *loop) down(i int) {
	n := len(l.timers)
	for {
		c := 2*i + 1
		if c >= n {
			return
		}
		if r := c + 1; r < n && l.timers[r].due < l.timers[c].due {
			c = r
		}
		if l.timers[i].due <= l.timers[c].due {
			return
		}
		l.swap(i, c)
		i = c
	}
}

func (l *loop) swap(i, j int) {
	l.timers[i], l.timers[j] = l.timers[j], l.timers[i]
	l.timers[i].hidx = int32(i)
	l.timers[j].hidx = int32(j)
}
