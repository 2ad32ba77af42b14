package kapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Client sends requests to one API server. It is safe for concurrent use.
type Client struct {
	base  string
	hc    *http.Client
	creds credentials
	lim   *limiter
}

// New returns a client for cfg.
func New(cfg *Config) (*Client, error) {
	if cfg == nil || cfg.Host == "" {
		return nil, errors.New("kapi: a Config with a Host is required")
	}
	// As client-go's transport: 30 s to connect, TCP keepalive, and HTTP/2 pings on a quiet
	// connection, so that a watch on a connection that died silently ends within a minute
	// (and is resumed) instead of waiting for TCP to give up.
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:         dialer.DialContext,
		TLSClientConfig:     cfg.TLS.Clone(),
		ForceAttemptHTTP2:   true, // one connection carries every request and watch
		HTTP2:               &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	return &Client{base: cfg.Host, hc: &http.Client{Transport: tr}, creds: cfg.creds, lim: newLimiter(cfg.QPS, cfg.Burst)}, nil
}

// Close releases the client's idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// StatusError is an API server's refusal (a metav1.Status).
type StatusError struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"` // NotFound, AlreadyExists, Conflict, Gone, Expired, ...
	Message string `json:"message"`
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("the API server answered %d %s: %s", e.Code, e.Reason, e.Message)
}

// Reasons of a StatusError that callers tell apart.
const (
	ReasonNotFound      = "NotFound"
	ReasonAlreadyExists = "AlreadyExists"
	ReasonConflict      = "Conflict"
	ReasonGone          = "Gone"
	ReasonExpired       = "Expired"
)

// ReasonOf returns the Reason of a StatusError in err's chain, "" if there is none.
func ReasonOf(err error) string {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Reason
	}
	return ""
}

// CodeOf returns the HTTP code of a StatusError in err's chain, 0 if there is none.
func CodeOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// do sends one request and decodes a 2xx answer into out (if not nil). A 401 drops the cached
// credentials and is retried once with fresh ones (a rotated token, an expired plugin token).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	resp, err := c.send(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber() // integers stay exact (resource versions, generations, ports)
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("kapi: %s %s: decoding the answer: %w", method, path, err)
	}
	return nil
}

// send returns a 2xx response (its body for the caller to read and close) or the error.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, body any) (*http.Response, error) {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return nil, fmt.Errorf("kapi: %s %s: %w", method, path, err)
		}
	}
	for attempt := 0; ; attempt++ {
		if err := c.lim.wait(ctx); err != nil {
			return nil, err
		}
		u := c.base + path
		if len(q) > 0 {
			u += "?" + q.Encode()
		}
		req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(raw))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "ewgate")
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if c.creds != nil {
			tok, err := c.creds.token(ctx)
			if err != nil {
				return nil, err
			}
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("kapi: %s %s: %w", method, path, err)
		}
		if resp.StatusCode/100 == 2 {
			return resp, nil
		}
		se := statusOf(resp)
		if resp.StatusCode == http.StatusUnauthorized && c.creds != nil && attempt == 0 {
			c.creds.invalidate()
			continue
		}
		return nil, fmt.Errorf("kapi: %s %s: %w", method, path, se)
	}
}

// statusOf reads the metav1.Status of a refusal (and closes the body).
func statusOf(resp *http.Response) *StatusError {
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	se := &StatusError{}
	if json.Unmarshal(b, se) != nil || se.Code == 0 {
		se.Code, se.Message = resp.StatusCode, strings.TrimSpace(string(b))
	}
	if se.Reason == "" {
		se.Reason = http.StatusText(resp.StatusCode)
	}
	return se
}

// limiter is a token bucket: qps tokens a second, at most burst saved.
type limiter struct {
	qps   float64
	burst float64
	mu    sync.Mutex
	avail float64
	last  time.Time
}

func newLimiter(qps float64, burst int) *limiter {
	if burst < 1 {
		burst = 1
	}
	return &limiter{qps: qps, burst: float64(burst), avail: float64(burst), last: time.Now()}
}

// wait takes a token, waiting for one if need be.
func (l *limiter) wait(ctx context.Context) error {
	if l.qps <= 0 {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	l.avail = min(l.burst, l.avail+now.Sub(l.last).Seconds()*l.qps)
	l.last = now
	l.avail--
	short := -l.avail
	l.mu.Unlock()
	if short <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(short / l.qps * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
