package vmcontrol

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/gateway/internal/logsample"
	"github.com/ewgate/ewgate/registrar"
)

// streamDesc: every forwarded call is treated as bidirectional streaming; a unary call is a
// stream of one message each way, which is what it is on the wire.
var streamDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// stream is the state of one VM RPC, for its log line and metrics.
type stream struct {
	method  string
	start   time.Time
	source  string // the peer's address, known before authentication
	node    string // the ADS node ID, once read (client-chosen: capped when logged)
	reason  string // why the front refused the stream ("" if it did not): the log sampling key
	caller  *caller
	up, dn  int64 // bytes to the upstream, to the VM
	session *registrar.Session
	// registrar registers the VM (its verified cluster's); nil: the front registers no VM.
	registrar Registrar
	// vmErr is the error that ended the reading of the VM's side (not io.EOF), set by the
	// reader before it hands the error over; readerDone is closed when the reader has exited.
	vmErr      atomic.Pointer[error]
	readerDone chan struct{}
	// releaseVM frees the stream's slot of the per-VM limit (ADS: taken once the node is known).
	releaseVM func()
}

// handle is the gRPC handler of every method: authenticate, pick the upstream, for ADS read
// the node and register, then forward both ways.
func (f *Front) handle(_ any, ss grpc.ServerStream) (err error) {
	st := &stream{start: time.Now()}
	st.method, _ = grpc.MethodFromServerStream(ss)
	ctx := ss.Context()
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		st.source = p.Addr.String()
		if f.tracker != nil {
			f.tracker.streamStarted(st.source)
			defer f.tracker.streamEnded(st.source)
		}
	}
	f.m.active.Inc()
	defer func() {
		f.m.active.Dec()
		err = f.vmEnded(ctx, st, err)
		f.finish(st, err)
	}()
	c, result, err := f.authenticate(ctx)
	if err != nil {
		st.reason = "auth_" + result
		return err
	}
	st.caller = c
	up := f.upstreams[c.cluster]
	if up == nil {
		st.reason = "no_upstream"
		return status.Errorf(codes.PermissionDenied, "ewgate: no control plane is configured for cluster %q", c.cluster)
	}
	var ok bool
	if st.registrar, ok = f.registrarFor(c.cluster); !ok {
		st.reason = "no_registrar"
		return status.Errorf(codes.FailedPrecondition, "ewgate: no registration store is configured for cluster %q "+
			"(other clusters have one): give it one in ewgate's config (kubernetes.clusters)", c.cluster)
	}
	limit, release := f.limits.open()
	if limit != "" {
		return f.refuseLimit(st, limit)
	}
	defer release()
	isADS := st.method == MethodADS || st.method == MethodDeltaADS
	if !isADS { // an ADS stream is counted once its node is known (admitADS)
		if limit, release := f.limits.openVM(vmKey(c, "")); limit != "" {
			return f.refuseLimit(st, limit)
		} else {
			defer release()
		}
	}
	in := f.startReader(ctx, ss, st)
	// Every way out of the stream ends its registrar session, a failed or abandoned
	// registration wait included: the registrar keeps a workload connected (and its
	// WorkloadEntry routed) for as long as a session of it is open.
	defer func() {
		if st.session != nil {
			st.session.Close()
		}
	}()
	defer func() {
		if st.releaseVM != nil {
			st.releaseVM()
		}
	}()
	var first *frame
	if isADS {
		if first, err = f.admitADS(ctx, st, in); err != nil {
			return err
		}
	}
	return f.forward(ctx, ss, up, st, in, first)
}

// refuseLimit counts a stream limit and returns the VM's status.
func (f *Front) refuseLimit(st *stream, limit string) error {
	f.m.limits.WithLabelValues(limit).Inc()
	st.reason = limit
	return status.Errorf(codes.ResourceExhausted, "ewgate: too many open streams (%s)", limit)
}

// received is one result of reading the VM's side.
type received struct {
	f   *frame
	err error
}

// startReader reads the VM's messages on a goroutine of its own and hands them over one at a
// time (an unbuffered channel): while the upstream does not take a message, nothing more is
// read, and HTTP/2 flow control holds the VM back. The goroutine ends when the VM's side ends
// or the stream's context does (the handler returning cancels it); the Front waits for it.
func (f *Front) startReader(ctx context.Context, ss grpc.ServerStream, st *stream) <-chan received {
	in := make(chan received)
	st.readerDone = make(chan struct{})
	f.wg.Go(func() {
		defer close(st.readerDone)
		for {
			fr := &frame{}
			err := ss.RecvMsg(fr)
			if err != nil {
				fr = nil
				if err != io.EOF {
					st.vmErr.Store(&err)
				}
			}
			select {
			case in <- received{f: fr, err: err}:
			case <-ctx.Done():
				if fr != nil {
					fr.free()
				}
				return
			}
			if err != nil {
				return
			}
		}
	})
	return in
}

// admitADS waits for the first request, checks its node against the identity, registers the
// VM when it asks to be, and returns the request to forward first.
func (f *Front) admitADS(ctx context.Context, st *stream, in <-chan received) (*frame, error) {
	t := time.NewTimer(f.cfg.Limits.FirstMessageTimeout)
	defer t.Stop()
	var r received
	select {
	case r = <-in:
	case <-t.C:
		f.m.limits.WithLabelValues("first_message_timeout").Inc()
		st.reason = "first_message_timeout"
		return nil, status.Error(codes.DeadlineExceeded, "ewgate: no discovery request within the first-message timeout")
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if r.err != nil {
		return nil, f.vmRecvError(st, r.err)
	}
	fr, err := decodeFirst(st.method, r.f.bytes())
	if err != nil {
		r.f.free()
		st.reason = "bad_first_request"
		return nil, status.Error(codes.InvalidArgument, "ewgate: "+capMsg(err.Error()))
	}
	st.node = fr.node.GetId()
	c := st.caller
	if cid := metaString(fr.node.GetMetadata(), "CLUSTER_ID"); cid != "" && cid != c.cluster {
		r.f.free()
		st.reason = resultClusterMismatch
		f.m.auth.WithLabelValues(resultClusterMismatch).Inc()
		return nil, status.Errorf(codes.PermissionDenied,
			"ewgate: node CLUSTER_ID %q does not match the cluster %q that vouched for %s: fix ISTIO_META_CLUSTER_ID", short(cid), c.cluster, c.id.SPIFFEID)
	}
	limit, release := f.limits.openVM(vmKey(c, fr.node.GetId()))
	if limit != "" {
		r.f.free()
		return nil, f.refuseLimit(st, limit)
	}
	st.releaseVM = release
	if fr.group == "" || st.registrar == nil {
		return r.f, nil
	}
	if err := f.register(ctx, st, fr); err != nil {
		r.f.free()
		return nil, err
	}
	b, err := fr.withoutAutoRegister()
	if err != nil {
		r.f.free()
		return nil, status.Error(codes.Internal, "ewgate: re-encoding the first request: "+err.Error())
	}
	r.f.replace(b)
	return r.f, nil
}

// register connects the VM's workload and waits until its WorkloadEntry is written, so the VM
// is in the mesh before its first response.
func (f *Front) register(ctx context.Context, st *stream, fr *firstRequest) error {
	c := st.caller
	node := registrarNode(fr.node)
	sess, err := st.registrar.Connect(ctx, registrar.Request{
		Identity: registrar.Identity{Cluster: c.cluster, Namespace: c.id.Namespace,
			ServiceAccount: c.id.ServiceAccount, SPIFFEID: c.id.SPIFFEID},
		Node: node, Source: c.source, // Time zero: the registrar's clock
	})
	if err != nil {
		f.m.registers.WithLabelValues("refused").Inc()
		st.reason = "registration_refused"
		return registrationError(err, node.AutoRegisterGroup, c.id.Namespace, c.cluster)
	}
	st.session = sess
	t := time.NewTimer(f.cfg.RegisterTimeout)
	defer t.Stop()
	select {
	case <-sess.Registered():
		f.m.registers.WithLabelValues("registered").Inc()
		return nil
	case <-t.C:
		f.m.registers.WithLabelValues("timeout").Inc()
		st.reason = "registration_timeout"
		return status.Error(codes.Unavailable, "ewgate: the WorkloadEntry could not be written in time; retry")
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// registrationError maps the registrar's refusals onto the codes istiod uses, with what to fix.
// A missing group names the cluster whose store was looked in: with a store per cluster the
// same namespace exists in each, and a group created in another cluster than the VM's (the one
// that vouched for it) is the likely mistake.
func registrationError(err error, group, ns, cluster string) error {
	switch {
	case errors.Is(err, registrar.ErrGroupNotFound):
		return status.Errorf(codes.FailedPrecondition,
			"ewgate: no WorkloadGroup %q in namespace %q of cluster %q (the VM's cluster): create it there, or fix ISTIO_META_AUTO_REGISTER_GROUP (%v)",
			short(group), ns, cluster, capMsg(err.Error()))
	case errors.Is(err, registrar.ErrDenied):
		return status.Errorf(codes.PermissionDenied,
			"ewgate: this identity may not join WorkloadGroup %s/%s: use the group's namespace and service account (%v)", ns, short(group), capMsg(err.Error()))
	case errors.Is(err, registrar.ErrAddressRefused):
		return status.Errorf(codes.PermissionDenied, "ewgate: the VM's address is refused by the address policy: %v", capMsg(err.Error()))
	case errors.Is(err, registrar.ErrReservedLabel), errors.Is(err, registrar.ErrInvalidNode):
		return status.Errorf(codes.InvalidArgument, "ewgate: fix the node metadata: %v", capMsg(err.Error()))
	}
	return status.Errorf(codes.Unavailable, "ewgate: registration failed, retry: %v", capMsg(err.Error()))
}

// vmRecvError turns a failed read of the VM's side into the stream's status.
func (f *Front) vmRecvError(_ *stream, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.FromContextError(err).Err()
}

// vmEnded returns the stream's final status. A message over max_message_bytes makes gRPC
// write ResourceExhausted to the VM and cancel the stream's context inside RecvMsg, before the
// reader can hand the error over, so the handler may have returned Canceled (or the upstream's
// answer to the cancellation) for what was a message_size refusal. When the context has ended,
// the reader (which then returns promptly) is waited for and its error is what counts.
func (f *Front) vmEnded(ctx context.Context, st *stream, err error) error {
	if st.readerDone != nil && ctx.Err() != nil {
		<-st.readerDone
	}
	if p := st.vmErr.Load(); p != nil && status.Code(*p) == codes.ResourceExhausted {
		f.m.limits.WithLabelValues("message_size").Inc()
		st.reason = "message_size"
		return *p
	}
	return err
}

// forward opens the upstream stream and copies messages both ways until the upstream ends the
// call or the VM goes away; the upstream's headers, trailers and status reach the VM as sent.
func (f *Front) forward(ctx context.Context, ss grpc.ServerStream, up *upstream, st *stream, in <-chan received, first *frame) error {
	c := st.caller
	md, _ := metadata.FromIncomingContext(ctx)
	var call string
	if up.cfg.Builtin {
		h, forget := f.builtin.register(c.id)
		defer forget()
		call = h
	}
	upCtx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, outgoing(md, up.cfg.Identity, c, call)))
	defer cancel()
	cs, err := up.pick().NewStream(upCtx, streamDesc, st.method)
	if err != nil {
		if first != nil {
			first.free()
		}
		return err
	}
	toVM := f.m.bytes.WithLabelValues(c.cluster, "to_vm")
	toUp := f.m.bytes.WithLabelValues(c.cluster, "to_upstream")
	done := make(chan error, 1)
	go func() { done <- f.copyToVM(cs, ss, st, toVM) }()
	if first != nil {
		n := int64(first.Len())
		if err := cs.SendMsg(first); err != nil {
			first.free()
			return f.endWith(cancel, done)
		}
		st.up += n
		toUp.Add(float64(n))
	}
	for {
		select {
		case err := <-done:
			return err
		case r := <-in:
			if r.err == io.EOF {
				cs.CloseSend()
				in = nil // half-closed: wait for the upstream to finish
				continue
			}
			if r.err != nil {
				cancel()
				<-done
				return f.vmRecvError(st, r.err)
			}
			if st.session != nil {
				if ok, healthy, msg := healthReport(st.method, r.f.bytes()); ok {
					f.applyHealth(st.session, healthy, msg)
					r.f.free() // ewgate owns the entry: the report is not the upstream's business
					continue
				}
			}
			n := int64(r.f.Len())
			if err := cs.SendMsg(r.f); err != nil {
				r.f.free()
				return f.endWith(cancel, done) // the upstream ended: its status is what counts
			}
			st.up += n
			toUp.Add(float64(n))
		}
	}
}

// endWith waits for the upstream's status after a failed send.
func (f *Front) endWith(cancel context.CancelFunc, done <-chan error) error {
	err := <-done
	cancel()
	return err
}

// copyToVM forwards the upstream's headers, messages and trailers; it returns the status the
// VM gets (nil for OK).
func (f *Front) copyToVM(cs grpc.ClientStream, ss grpc.ServerStream, st *stream, toVM interface{ Add(float64) }) error {
	if md, err := cs.Header(); err == nil && len(md) > 0 {
		if h := filterHeader(md); len(h) > 0 {
			ss.SendHeader(h)
		}
	}
	for {
		fr := &frame{}
		err := cs.RecvMsg(fr)
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if err == io.EOF {
				return nil
			}
			if status.Code(err) == codes.ResourceExhausted {
				f.m.limits.WithLabelValues("message_size").Inc()
			}
			return err
		}
		n := int64(fr.Len())
		if err := ss.SendMsg(fr); err != nil {
			fr.free()
			return status.FromContextError(ss.Context().Err()).Err()
		}
		st.dn += n
		toVM.Add(float64(n))
	}
}

func (f *Front) applyHealth(s *registrar.Session, healthy bool, msg string) {
	res := "healthy"
	if !healthy {
		res = "unhealthy"
	}
	if err := s.SetHealth(healthy, msg); err != nil {
		res = "error"
		f.log.Warn("control: health report not applied", zap.Error(err))
	}
	f.m.health.WithLabelValues(res).Inc()
}

// finish counts the stream and writes its log line (never a credential). Lines of streams the
// front refused are sampled per reason (refusals are what a flood produces); the line written
// after a sampled-out run carries how many were dropped. Client-chosen fields are capped.
func (f *Front) finish(st *stream, err error) {
	code := status.Code(err)
	cluster, identity := "none", ""
	if st.caller != nil {
		cluster, identity = st.caller.cluster, st.caller.id.SPIFFEID
	}
	f.m.streams.WithLabelValues(cluster, methodLabel(st.method), code.String()).Inc()
	var dropped uint64
	if st.reason != "" {
		var ok bool
		if ok, dropped = f.sample.Allow(st.reason); !ok {
			return
		}
	}
	fields := make([]zap.Field, 0, 13)
	fields = append(fields, zap.String("method", short(st.method)), zap.String("identity", identity),
		zap.String("cluster", cluster), zap.String("source", st.source), zap.Duration("duration", time.Since(st.start)),
		zap.String("result", code.String()), zap.Int64("bytes_to_upstream", st.up), zap.Int64("bytes_to_vm", st.dn))
	if st.node != "" {
		fields = append(fields, zap.String("node", logsample.Cap(st.node, maxNodeKey)))
	}
	if err != nil {
		fields = append(fields, zap.String("message", capMsg(status.Convert(err).Message())))
	}
	if st.reason != "" {
		fields = append(fields, zap.String("refused", st.reason))
		if dropped > 0 {
			fields = append(fields, zap.Uint64("dropped", dropped))
		}
	}
	f.log.Info("control stream", fields...)
}
