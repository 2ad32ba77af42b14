package dataplane

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/cespare/xxhash/v2"
	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/splice"
)

var errNoEndpoint = errors.New("dataplane: no endpoint left to try")

// dial connects to an endpoint of the connection's cluster and sends it the peeked bytes first,
// trying up to max_connect_attempts endpoints, those in tried (already tried, lastErr the last
// failure) included; each failure, of the connect or of sending first, counts toward the
// endpoint's ejection. The endpoint counts the connection from then on.
func (c *conn) dial(tried []*Endpoint, lastErr error) bool {
	cl := c.cluster
	h := c.hash()
	if lastErr == nil {
		lastErr = errNoEndpoint
	}
	for len(tried) < cl.Config.MaxConnectAttempts {
		now := c.g.now()
		e := cl.lb.pick(h, tried, now.UnixNano())
		if e == nil {
			break
		}
		tried = append(tried, e)
		up, err := c.dialEndpoint(e.Address, cl.Config.ConnectTimeout)
		if c.dialed(e, up, err, now) {
			return true
		}
		lastErr = err
	}
	if errors.Is(lastErr, errNoEndpoint) {
		return c.fail(resultNoEndpoint, lastErr)
	}
	return c.fail(resultConnectFailed, lastErr)
}

// hash is the client's key for endpoint choices that stick to a client (consistent hashing).
func (c *conn) hash() uint64 { return xxhash.Sum64String(c.clientAddr.Addr().String()) }

// dialed records how a dial of endpoint e that started at now went: up is the connection to it
// (the peeked bytes sent), or err the failure. It reports whether the connection has its
// endpoint.
func (c *conn) dialed(e *Endpoint, up net.Conn, err error, now time.Time) bool {
	cl := c.cluster
	if err == nil {
		e.state.success(now, cl.Config.OutlierDetection)
		c.upstream, c.endpoint = up, e
		c.up = int64(len(c.peeked))
		e.state.active.Add(1)
		c.g.clusterConns.add(c.l.name, cl.Name, 1)
		return true
	}
	c.g.m.connectFail.WithLabelValues(cl.Name).Inc()
	if e.state.failure(now, cl.Config.OutlierDetection) {
		c.g.m.ejections.WithLabelValues(cl.Name).Inc()
		c.g.log.Warn("endpoint ejected after consecutive connect failures", zap.String("cluster", cl.Name),
			zap.String("endpoint", e.Address), zap.Int32("ejections", e.state.ejections.Load()), zap.Error(err))
	}
	return false
}

// dialEndpoint connects to address (host:port) and sends the peeked bytes, within timeout: on
// the client's relay-engine loop when it has one, with Go's dialer otherwise.
func (c *conn) dialEndpoint(address string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	sc, ok := c.client.(*splice.Conn)
	if !ok {
		return dialNet(address, deadline, c.peeked)
	}
	if ap, err := netip.ParseAddrPort(address); err == nil {
		return sc.Dial(ap, deadline, c.peeked)
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
		var u *splice.Conn
		if u, err = sc.Dial(netip.AddrPortFrom(ip.Unmap(), uint16(pn)), deadline, c.peeked); err == nil {
			return u, nil
		}
	}
	return nil, err
}

// dialNet connects to address with Go's dialer and sends first, giving up at deadline.
func dialNet(address string, deadline time.Time, first []byte) (net.Conn, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	u, err := dialer.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	u.SetWriteDeadline(deadline)
	if _, err := u.Write(first); err != nil {
		u.Close()
		return nil, err
	}
	u.SetWriteDeadline(time.Time{})
	return u, nil
}
