package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/internal/logsample"
	"github.com/ewgate/ewgate/gateway/proxyproto"
	"github.com/ewgate/ewgate/gateway/splice"
	"github.com/ewgate/ewgate/sni"
)

// Connection results: the metric label and the access log's result field.
const (
	resultOK            = "ok"
	resultOverLimit     = "over_limit"
	resultOverSource    = "over_source_limit"
	resultProxyProtocol = "proxy_protocol_error"
	resultNoEndpoint    = "no_endpoint"
	resultConnectFailed = "connect_failed"
	resultIdle          = "idle_timeout"
	resultDrained       = "drained"
	resultReset         = "reset"
)

// refusal maps a peek or routing error to its result label.
func refusal(err error) string {
	switch {
	case errors.Is(err, sni.ErrTimeout):
		return "hello_timeout"
	case errors.Is(err, sni.ErrTooLarge):
		return "hello_too_large"
	case errors.Is(err, sni.ErrNotTLS):
		return "not_tls"
	case errors.Is(err, sni.ErrNoSNI):
		return "no_sni"
	case errors.Is(err, sni.ErrTruncated):
		return "hello_truncated"
	case errors.Is(err, ErrNotIstioName):
		return "not_istio_name"
	case errors.Is(err, ErrNoIstioALPN):
		return "no_istio_alpn"
	case errors.Is(err, ErrMeshOnIngress):
		return "mesh_name_on_ingress"
	case errors.Is(err, ErrNoRoute):
		return "unknown_sni"
	default:
		return "malformed_hello"
	}
}

// Refusal log lines (of connections never relayed) are sampled per listener and result: at most
// refusalLogBurst a refusalLogInterval each, the next line written carrying how many were
// dropped. Lines of relayed connections are never sampled.
const (
	refusalLogBurst    = 10
	refusalLogInterval = time.Second
)

// Caps on what a client chooses that goes into a log line (a hello may carry 64 KiB of ALPN).
const (
	logSNIBytes  = 256
	logALPNItems = 8
	logALPNBytes = 64
	logErrBytes  = 512
)

var errOverSourceLimit = errors.New("gateway: source address at max_connections_per_source")

// connLog is what the access-log line of one connection says.
type connLog struct {
	listener string
	client   netip.AddrPort // the PROXY header's source when a trusted load balancer sent one
	lb       netip.AddrPort // the load balancer's own address (the TCP peer) when it did
	source   netip.Addr     // the key of the per-source count this connection holds, if held
	hello    *sni.Hello
	cluster  string
	endpoint string
	up, down int64
	start    time.Time
	result   string
	err      error
	ep       *Endpoint // whose active count the connection holds; nil before dialling
}

func (g *Gateway) acceptLoop(l *listener) {
	defer g.wg.Done()
	var delay time.Duration
	for {
		c, err := l.accept()
		if err != nil {
			if l.closed.Load() {
				return
			}
			g.m.acceptFails.WithLabelValues(l.name).Inc()
			// Out of files or a transient kernel error: back off (5 ms doubling to 1 s) rather than
			// spin, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			g.log.Warn("accept failed; backing off", zap.String("listener", l.name), zap.Duration("delay", delay), zap.Error(err))
			t := time.NewTimer(delay)
			<-t.C
			continue
		}
		delay = 0
		t := g.snap.Load().Table(l.name)
		peer := addrPort(c.RemoteAddr())
		if t == nil || l.active.Load() >= int64(t.Listener.MaxConnections) {
			g.refuseAtAccept(l, c, peer, resultOverLimit)
			continue
		}
		rec := &connLog{listener: l.name, client: peer}
		// Counted on the TCP peer here, before any byte is read; a trusted load balancer's
		// connections are counted on the PROXY header's source once it is read (serveConn).
		if !t.trustsProxy(peer.Addr()) {
			if !l.sources.acquire(peer.Addr(), t.Listener.MaxConnectionsPerSource) {
				g.refuseAtAccept(l, c, peer, resultOverSource)
				continue
			}
			rec.source = peer.Addr()
		}
		rc := &relayConn{client: c}
		l.active.Add(1)
		g.m.active.WithLabelValues(l.name).Inc()
		g.track(rc)
		g.wg.Add(1)
		go func() {
			rec.start = g.now()
			if !g.serveConn(l, t, rec, rc, c) {
				c.Close()
				g.connDone(l, rc, rec)
			}
		}()
	}
}

// connDone ends the bookkeeping of a connection whose sockets are closed: its access-log line,
// metrics, endpoint load and the gateway's wait group.
func (g *Gateway) connDone(l *listener, rc *relayConn, rec *connLog) {
	if rec.ep != nil {
		rec.ep.state.active.Add(-1)
	}
	if rec.source.IsValid() {
		l.sources.release(rec.source)
	}
	g.finish(rec)
	g.untrack(rc)
	l.active.Add(-1)
	g.m.active.WithLabelValues(l.name).Dec()
	g.wg.Done()
}

// refuseAtAccept resets a connection refused before anything was read from it (over
// max_connections or max_connections_per_source), counts it and writes a sampled log line.
func (g *Gateway) refuseAtAccept(l *listener, c clientConn, peer netip.AddrPort, result string) {
	c.SetLinger(0) // RST: the client learns at once and no TIME_WAIT piles up under a flood
	c.Close()
	g.m.conns.WithLabelValues(l.name, "", result).Inc()
	ok, dropped := g.refusals.Allow(l.name + "\x00" + result)
	if !ok {
		return
	}
	msg := "connection refused: listener at max_connections"
	if result == resultOverSource {
		msg = "connection refused: source at max_connections_per_source"
	}
	g.log.Warn(msg, zap.String("listener", l.name), zap.Stringer("client", peer),
		zap.String("result", result), zap.Uint64("dropped", dropped))
}

// helloBufs holds the buffers hellos are read into, each only from accept until the hello is
// sent upstream. 4 KiB takes today's largest hellos (post-quantum key shares) with what the
// client sent after them in one read.
var helloBufs = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

// serveConn takes a connection from accept through the relay. It reports true when the relay
// engine took the connection (the engine then calls connDone); otherwise the connection is over
// when it returns.
func (g *Gateway) serveConn(l *listener, t *Table, rec *connLog, rc *relayConn, c clientConn) (handedOff bool) {
	lc := &t.Listener
	deadline := time.Now().Add(lc.HelloTimeout)
	if t.trustsProxy(rec.client.Addr()) {
		h, err := proxyproto.Read(c, lc.HelloTimeout)
		if err != nil {
			rec.result, rec.err = resultProxyProtocol, err
			return false
		}
		if src, ok := h.Source.(*net.TCPAddr); ok && src != nil {
			rec.lb, rec.client = rec.client, src.AddrPort()
			if !l.sources.acquire(rec.client.Addr(), lc.MaxConnectionsPerSource) {
				rec.result, rec.err = resultOverSource, errOverSourceLimit
				return false
			}
			rec.source = rec.client.Addr()
		}
	}
	// One deadline covers the PROXY header and the hello (a zero Timeout would mean Peek's default).
	remaining := time.Until(deadline)
	if remaining <= 0 {
		rec.result, rec.err = refusal(sni.ErrTimeout), sni.ErrTimeout
		return false
	}
	buf := helloBufs.Get().(*[]byte)
	defer func() {
		if buf != nil {
			helloBufs.Put(buf)
		}
	}()
	hello, peeked, err := sni.Peek(c, sni.PeekOptions{Timeout: remaining, MaxSize: lc.MaxHelloBytes, Buf: *buf})
	g.m.peek.WithLabelValues(l.name).Observe(time.Since(rec.start).Seconds())
	rec.hello = hello
	if err != nil {
		rec.result, rec.err = refusal(err), err
		return false
	}
	cl, err := t.Route(hello)
	if err != nil {
		rec.result, rec.err = refusal(err), err
		sendAlert(c, alertUnrecognizedName)
		return false
	}
	rec.cluster = cl.Name
	up, ep, err := g.dialCluster(cl, rec.client.Addr(), c, peeked)
	helloBufs.Put(buf) // peeked was sent or is not needed: the buffer is free for the next hello
	buf = nil
	if err != nil {
		rec.result, rec.err = resultConnectFailed, err
		if errors.Is(err, errNoEndpoint) {
			rec.result = resultNoEndpoint
		}
		return false
	}
	rec.endpoint = ep.Address
	rec.ep = ep
	rec.up = int64(len(peeked))
	ep.state.active.Add(1)
	return g.relayConn(l, rec, rc, c, up, lc.IdleTimeout)
}

// relayConn hands the pair to the relay engine or splices on goroutines until both sides are
// done.
func (g *Gateway) relayConn(l *listener, rec *connLog, rc *relayConn, client clientConn, up net.Conn, idle time.Duration) (handedOff bool) {
	if g.handOff(l, rec, rc, client, up, idle) {
		return true
	}
	r := &relay{client: client, upstream: up, idle: idle}
	rc.relay.Store(r)
	if g.cutting.Load() { // Shutdown's cut may have missed this relay
		r.stop(splice.Cut)
	}
	u, d, err := r.run()
	rec.relayed(splice.Reason(r.cut.Load()), u, d, err)
	return false
}

// relayed records how the relay of either engine ended: the bytes each way and the result.
func (rec *connLog) relayed(reason splice.Reason, up, down int64, err error) {
	rec.up += up
	rec.down = down
	switch reason {
	case splice.IdleTimeout:
		rec.result = resultIdle
	case splice.Cut:
		rec.result = resultDrained
	default:
		rec.result = resultOK
		if err != nil && !errors.Is(err, net.ErrClosed) { // closed: the other direction failed first
			rec.result, rec.err = resultReset, err
		}
	}
}

var errNoEndpoint = errors.New("gateway: no endpoint left to try")

// dialCluster connects to an endpoint of c for the connection from client and sends it first
// (the peeked bytes), trying up to max_connect_attempts endpoints; each failure, of the connect
// or of sending first, counts toward the endpoint's ejection.
func (g *Gateway) dialCluster(c *Cluster, client netip.Addr, cc clientConn, first []byte) (net.Conn, *Endpoint, error) {
	h := xxhash.Sum64String(client.String())
	var tried []*Endpoint
	lastErr := errNoEndpoint
	for range c.Config.MaxConnectAttempts {
		now := g.now()
		e := c.lb.pick(h, tried, now.UnixNano())
		if e == nil {
			break
		}
		tried = append(tried, e)
		conn, err := g.dialEndpoint(cc, e.Address, c.Config.ConnectTimeout, first)
		if err == nil {
			e.state.success(now, c.Config.OutlierDetection)
			return conn, e, nil
		}
		lastErr = err
		g.m.connectFail.WithLabelValues(c.Name).Inc()
		if e.state.failure(now, c.Config.OutlierDetection) {
			g.m.ejections.WithLabelValues(c.Name).Inc()
			g.log.Warn("endpoint ejected after consecutive connect failures", zap.String("cluster", c.Name),
				zap.String("endpoint", e.Address), zap.Int32("ejections", e.state.ejections.Load()), zap.Error(err))
		}
	}
	return nil, nil, lastErr
}

// dialEndpoint connects to address (host:port) and sends first, within timeout: on the client's
// relay-engine loop when it has one, with Go's dialer otherwise.
func (g *Gateway) dialEndpoint(cc clientConn, address string, timeout time.Duration, first []byte) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	sc, ok := cc.(*splice.Conn)
	if !ok {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		c, err := dialer.DialContext(ctx, "tcp", address)
		if err != nil {
			return nil, err
		}
		c.SetWriteDeadline(deadline)
		if _, err := c.Write(first); err != nil {
			c.Close()
			return nil, err
		}
		c.SetWriteDeadline(time.Time{})
		return c, nil
	}
	if ap, err := netip.ParseAddrPort(address); err == nil {
		return sc.Dial(ap, deadline, first)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	pn, err := net.LookupPort("tcp", port)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	for _, ip := range ips { // in the resolver's order, as Go's dialer tries them
		var c *splice.Conn
		if c, err = sc.Dial(netip.AddrPortFrom(ip.Unmap(), uint16(pn)), deadline, first); err == nil {
			return c, nil
		}
	}
	return nil, err
}

func (g *Gateway) finish(rec *connLog) {
	g.m.conns.WithLabelValues(rec.listener, rec.cluster, rec.result).Inc()
	if rec.up > 0 {
		g.m.bytes.WithLabelValues(rec.listener, rec.cluster, "upstream").Add(float64(rec.up))
	}
	if rec.down > 0 {
		g.m.bytes.WithLabelValues(rec.listener, rec.cluster, "downstream").Add(float64(rec.down))
	}
	ce := g.log.Check(zap.InfoLevel, "connection")
	if ce == nil {
		return // access log off (level above info): build no fields
	}
	// A connection that was never relayed is a refusal: its lines are sampled per listener and
	// result, so a flood writes a few lines a second with the count of those dropped.
	var dropped uint64
	refused := rec.endpoint == ""
	if refused {
		var ok bool
		if ok, dropped = g.refusals.Allow(rec.listener + "\x00" + rec.result); !ok {
			return
		}
	}
	fields := make([]zap.Field, 0, 13)
	fields = append(fields,
		zap.String("listener", rec.listener),
		zap.Stringer("client", rec.client),
		zap.String("result", rec.result),
		zap.Int64("bytes_up", rec.up),
		zap.Int64("bytes_down", rec.down),
		zap.Duration("duration", g.now().Sub(rec.start)),
	)
	if rec.lb.IsValid() {
		fields = append(fields, zap.Stringer("lb", rec.lb))
	}
	if refused {
		fields = append(fields, zap.Uint64("dropped", dropped))
	}
	if rec.hello != nil {
		fields = append(fields, zap.String("sni", logsample.Cap(rec.hello.ServerName, logSNIBytes)),
			zap.Strings("alpn", logsample.CapList(rec.hello.ALPN, logALPNItems, logALPNBytes)))
	}
	if rec.cluster != "" {
		fields = append(fields, zap.String("cluster", rec.cluster))
	}
	if rec.endpoint != "" {
		fields = append(fields, zap.String("endpoint", rec.endpoint))
	}
	if rec.err != nil {
		fields = append(fields, zap.String("error", logsample.Cap(rec.err.Error(), logErrBytes)))
	}
	ce.Write(fields...)
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// TLS alerts (RFC 8446 6.2). ewgate never terminates TLS, but a fatal alert tells a client why
// it was refused instead of a bare reset.
const alertUnrecognizedName = 112

// The alert is followed by a FIN, and what the client still sends is read and dropped for a
// moment (bounded in time and bytes) before the socket closes: closing with unread bytes makes
// the kernel send a reset, which can overtake the alert.
func sendAlert(c clientConn, desc byte) {
	c.SetDeadline(time.Now().Add(time.Second))
	// record: type alert(21), version TLS 1.2 (what TLS 1.3 uses on the wire too), length 2,
	// level fatal(2), description.
	if _, err := c.Write([]byte{21, 3, 3, 0, 2, 2, desc}); err != nil {
		return
	}
	c.CloseWrite()
	io.CopyN(io.Discard, c, 64<<10)
}

// sourceCounts counts a listener's open connections per source address, so that one source
// cannot take every slot of max_connections. IPv6 sources are counted per /64, what one
// subscriber commonly gets.
type sourceCounts struct {
	mu sync.Mutex
	n  map[netip.Addr]int
}

func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// acquire counts a connection from a and reports true, or reports false when a already holds
// max connections.
func (s *sourceCounts) acquire(a netip.Addr, max int) bool {
	k := sourceKey(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[k] >= max {
		return false
	}
	if s.n == nil {
		s.n = map[netip.Addr]int{}
	}
	s.n[k]++
	return true
}

func (s *sourceCounts) release(a netip.Addr) {
	k := sourceKey(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[k]--; s.n[k] <= 0 {
		delete(s.n, k)
	}
}
