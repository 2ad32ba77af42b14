package dataplane

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/internal/logsample"
	"github.com/ewgate/ewgate/gateway/proxyproto"
	"github.com/ewgate/ewgate/gateway/splice"
	"github.com/ewgate/ewgate/sni"
)

// conn is one accepted connection, from accept to its access-log line: the listener and route
// table it came in on, its two sockets, what its hello said, where it was routed and dialled,
// the bytes it moved and how it ended. Its goroutine runs serve, whose steps are its methods:
// route, dial, relay; done writes the one access-log line when the sockets are closed.
type conn struct {
	g     *Gateway
	l     *listener
	table *Table // the listener's table in the snapshot at accept: the connection keeps it

	client   clientSocket // the accepted socket
	upstream net.Conn     // the endpoint's socket; nil before dial
	start    time.Time

	// From the hello's peek until it is sent upstream: the pooled buffer the hello was read
	// into, and every byte the peek read (the endpoint gets them first).
	helloBuf *[]byte
	peeked   []byte

	// What the access-log line says.
	clientAddr netip.AddrPort // the PROXY header's source when a trusted load balancer sent one
	lbAddr     netip.AddrPort // the load balancer's own address (the TCP peer) when it did
	source     netip.Addr     // the key of the per-source count this connection holds, if held
	hello      *sni.Hello
	cluster    *Cluster
	endpoint   *Endpoint // whose active count the connection holds; nil before dialling
	up, down   int64     // bytes client -> endpoint, endpoint -> client
	result     string
	err        error
	alert      byte // the TLS alert a refusal after the hello sends before the close; 0: none

	mu       sync.Mutex
	relaying cutter // the relay that has the sockets; nil before one does (see cut)
}

// clientSocket is an accepted socket: a *splice.Conn on the relay engine's loops, or a
// *net.TCPConn without the engine.
type clientSocket interface {
	net.Conn
	CloseWrite() error
	SetLinger(sec int) error
}

// cutter ends a relay before its time (at the drain deadline): a *splice.Pair or a *copyRelay.
type cutter interface{ Cut() }

// helloBufs holds the buffers hellos are read into, each only from accept until the hello is
// sent upstream. 4 KiB takes today's largest hellos (post-quantum key shares) with what the
// client sent after them in one read.
var helloBufs = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

// serve is the connection's goroutine, from the start: route, dial, relay (see finish).
func (c *conn) serve() {
	routed := c.route()
	c.finish(routed, routed && c.dial(nil, nil))
}

// finish ends the steps before the relay. A connection that is routed and dialled goes to a
// relay engine, which calls done when the relay ends (on this goroutine or later on its own);
// one refused or failed on the way is closed and done here.
func (c *conn) finish(routed, dialled bool) {
	c.freeHello() // the hello was sent upstream or is not needed: the buffer serves the next one
	if dialled {
		c.relay()
		return
	}
	if routed {
		// The hello named a cluster but no endpoint took the connection (no_endpoint,
		// connect_failed): the client reads internal_error rather than a bare close.
		c.alert = alertInternalError
	}
	if c.alert != 0 {
		sendAlert(c.client, c.alert)
	}
	c.client.Close()
	c.done()
}

// route reads the PROXY header when the peer is a trusted load balancer, peeks the ClientHello
// and finds its cluster in the connection's table. It reports false when the connection is
// refused (result and err say why; c.alert is the TLS alert serve sends for a parsed hello).
func (c *conn) route() bool {
	lc := &c.table.Listener
	deadline := time.Now().Add(lc.HelloTimeout)
	if c.table.trustsProxy(c.clientAddr.Addr()) && !c.readProxyHeader() {
		return false
	}
	// One deadline covers the PROXY header and the hello (a zero Timeout would mean Peek's default).
	remaining := time.Until(deadline)
	if remaining <= 0 {
		return c.fail(refusal(sni.ErrTimeout), sni.ErrTimeout)
	}
	if c.helloBuf == nil {
		c.helloBuf = helloBufs.Get().(*[]byte)
	}
	// The relay engine's loop may have read the first bytes already (fast).
	hello, peeked, err := sni.Peek(c.client, sni.PeekOptions{Timeout: remaining, MaxSize: lc.MaxHelloBytes,
		Buf: *c.helloBuf, Have: len(c.peeked)})
	c.l.series.peek.Observe(time.Since(c.start).Seconds())
	c.hello, c.peeked = hello, peeked
	if err != nil {
		if errors.Is(err, sni.ErrNoSNI) { // a whole hello, but nothing to route by
			c.alert = alertMissingExtension
		}
		return c.fail(refusal(err), err)
	}
	cl, err := c.table.Route(hello, c.clientAddr.Addr())
	if err != nil {
		c.alert = alertFor(err)
		return c.fail(refusal(err), err)
	}
	c.hello, c.cluster = cl.share(hello), cl
	return true
}

// readProxyHeader reads exactly the PROXY header; the client is then its source, which takes a
// per-source count of its own (a trusted load balancer's connections are not counted on it).
func (c *conn) readProxyHeader() bool {
	lc := &c.table.Listener
	h, err := proxyproto.Read(c.client, lc.HelloTimeout)
	if err != nil {
		return c.fail(resultProxyProtocol, err)
	}
	if src, ok := h.Source.(*net.TCPAddr); ok && src != nil {
		c.lbAddr, c.clientAddr = c.clientAddr, src.AddrPort()
		if !c.l.sources.Acquire(c.clientAddr.Addr(), lc.MaxConnectionsPerSource) {
			return c.fail(resultOverSource, errOverSourceLimit)
		}
		c.source = c.clientAddr.Addr()
	}
	return true
}

// fail records why the connection ends before its relay, and reports false.
func (c *conn) fail(result string, err error) bool {
	c.result, c.err = result, err
	return false
}

// freeHello returns the hello's buffer to the pool.
func (c *conn) freeHello() {
	if c.helloBuf != nil {
		helloBufs.Put(c.helloBuf)
		c.helloBuf, c.peeked = nil, nil
	}
}

// relayEnded records how the relay of either engine ended: the bytes each way and the result.
//
// A reset that comes after the client had sent all it would (its EOF) is the upstream closing
// once the exchange was over, with bytes of the client's still unread (a TLS server that does
// not read the client's close_notify resets the connection): the result is ok, and the error
// stays in the access log. A reset before the client's EOF cut the exchange: reset.
func (c *conn) relayEnded(reason splice.Reason, up, down int64, err error, clientEOF bool) {
	c.up += up
	c.down = down
	switch reason {
	case splice.IdleTimeout:
		c.result = resultIdle
	case splice.Cut:
		c.result = resultDrained
	default:
		c.result = resultOK
		switch {
		case err == nil, errors.Is(err, net.ErrClosed): // closed: the other direction failed first
		case clientEOF && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)):
			c.err = err
		default:
			c.result, c.err = resultReset, err
		}
	}
}

// setRelay records that relay r has the sockets: from now on cut stops r. If Shutdown's cut has
// begun it may have missed r, so r is cut at once.
func (c *conn) setRelay(r cutter) {
	c.mu.Lock()
	c.relaying = r
	c.mu.Unlock()
	if c.g.cutting.Load() {
		r.Cut()
	}
}

// cut ends the connection at the drain deadline, in whichever step it is: its relay is cut,
// or before one has the sockets the client is closed (the step in progress then fails).
func (c *conn) cut() {
	c.mu.Lock()
	r := c.relaying
	if r == nil {
		c.client.Close()
	}
	c.mu.Unlock()
	if r != nil {
		r.Cut()
	}
}

// done ends the bookkeeping of a connection whose sockets are closed: the endpoint's and the
// source's counts, the metrics, the access-log line and the gateway's wait group.
func (c *conn) done() {
	c.count() // before the open counts drop: whoever sees the connection gone sees it counted
	if c.endpoint != nil {
		c.endpoint.state.active.Add(-1)
		c.g.clusterConns.add(c.l.name, c.cluster.Name, -1)
	}
	if c.source.IsValid() {
		c.l.sources.Release(c.source)
	}
	c.log()
	c.g.untrack(c)
	c.l.active.Add(-1)
	c.l.series.active.Dec()
	c.g.wg.Done()
}

func (c *conn) clusterName() string {
	if c.cluster == nil {
		return ""
	}
	return c.cluster.Name
}

// count adds the connection to the connection and byte counters.
func (c *conn) count() {
	m, cluster := c.g.m, c.clusterName()
	m.conns.WithLabelValues(c.l.name, cluster, c.result).Inc()
	if c.up > 0 {
		m.bytes.WithLabelValues(c.l.name, cluster, "upstream").Add(float64(c.up))
	}
	if c.down > 0 {
		m.bytes.WithLabelValues(c.l.name, cluster, "downstream").Add(float64(c.down))
	}
}

// log writes the connection's access-log line. A connection that was never relayed is a
// refusal: its lines are sampled per listener and result, so a flood writes a few lines a
// second with the count of those dropped.
func (c *conn) log() {
	ce := c.g.log.Check(zap.InfoLevel, "connection")
	if ce == nil {
		return // access log off (level above info): build no fields
	}
	var dropped uint64
	refused := c.endpoint == nil
	if refused {
		var ok bool
		if ok, dropped = c.g.refusals.Allow(c.l.name + "\x00" + c.result); !ok {
			return
		}
	}
	fields := make([]zap.Field, 0, 13)
	fields = append(fields,
		zap.String("listener", c.l.name),
		zap.Stringer("client", c.clientAddr),
		zap.String("result", c.result),
		zap.Int64("bytes_up", c.up),
		zap.Int64("bytes_down", c.down),
		zap.Duration("duration", c.g.now().Sub(c.start)),
	)
	if c.lbAddr.IsValid() {
		fields = append(fields, zap.Stringer("lb", c.lbAddr))
	}
	if refused {
		fields = append(fields, zap.Uint64("dropped", dropped))
	}
	if c.hello != nil {
		fields = append(fields, zap.String("sni", logsample.Cap(c.hello.ServerName, logSNIBytes)),
			zap.Strings("alpn", logsample.CapList(c.hello.ALPN, logALPNItems, logALPNBytes)))
	}
	if c.cluster != nil {
		fields = append(fields, zap.String("cluster", c.cluster.Name))
	}
	if c.endpoint != nil {
		fields = append(fields, zap.String("endpoint", c.endpoint.Address))
	}
	if c.err != nil {
		fields = append(fields, zap.String("error", logsample.Cap(c.err.Error(), logErrBytes)))
	}
	ce.Write(fields...)
}

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
	case errors.Is(err, ErrNotExported):
		return "not_exported"
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

var errOverSourceLimit = errors.New("dataplane: source address at max_connections_per_source")

// TLS alerts (RFC 8446 6.2). ewgate never terminates TLS, but a fatal alert tells a client why
// it was refused instead of a bare reset (Envoy's gateway resets; istio#45010 asks for better).
// Only a refusal after a parsed hello gets one: before it (caps at accept, a PROXY header
// error, bytes that are not a ClientHello) there is no TLS client to read it.
const (
	// No route for the name: not an Istio outbound_ name, no Istio ALPN, a name the listener
	// does not publish, a mesh name on an ingress listener. crypto/tls: "remote error: tls:
	// unrecognized name"; OpenSSL: "tlsv1 unrecognized name".
	alertUnrecognizedName = 112
	// The name is routed but not exported to this client (listeners[].export). crypto/tls:
	// "remote error: tls: access denied"; OpenSSL: "tlsv1 alert access denied".
	alertAccessDenied = 49
	// The name is routed but no endpoint took the connection (no_endpoint, connect_failed): a
	// fault of the gateway's side, not of the client's hello. crypto/tls: "remote error: tls:
	// internal error"; OpenSSL: "tlsv1 alert internal error".
	alertInternalError = 80
	// A whole hello without a server name (no_sni): there is nothing to route by. crypto/tls:
	// "remote error: tls: missing extension"; OpenSSL: "tlsv13 alert missing extension".
	alertMissingExtension = 109
)

// alertFor is the alert of a routing refusal.
func alertFor(err error) byte {
	if errors.Is(err, ErrNotExported) {
		return alertAccessDenied
	}
	return alertUnrecognizedName
}

// The alert is followed by a FIN, and what the client still sends is read and dropped for a
// moment (bounded in time and bytes) before the socket closes: closing with unread bytes makes
// the kernel send a reset, which can overtake the alert.
func sendAlert(c clientSocket, desc byte) {
	c.SetDeadline(time.Now().Add(time.Second))
	// record: type alert(21), version TLS 1.2 (what TLS 1.3 uses on the wire too), length 2,
	// level fatal(2), description.
	if _, err := c.Write([]byte{21, 3, 3, 0, 2, 2, desc}); err != nil {
		return
	}
	c.CloseWrite()
	io.CopyN(io.Discard, c, 64<<10)
}
