package registrar

// Idle is closed once nothing is ready or in flight in the registrar's queue (delayed retries
// and grace timers do not count): tests advance a fake clock, then wait on it.
func (r *Registrar) Idle() <-chan struct{} { return r.queue.Idle() }
