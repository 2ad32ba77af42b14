package vmcontrol

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// Defaults applied by SetDefaults (documented in docs/vm-onboarding.md).
const (
	DefaultAddress             = ":15012"
	DefaultConnections         = 2
	DefaultConnectTimeout      = 5 * time.Second
	DefaultMaxStreams          = 10000
	DefaultMaxStreamsPerVM     = 32
	DefaultMaxStreamsPerConn   = 100
	DefaultMaxHeaderBytes      = 64 << 10
	DefaultMaxConnections      = 10000
	DefaultMaxConnsPerSource   = 64
	DefaultMaxAuthPerSource    = 64
	DefaultMaxMessageBytes     = 4 << 20
	DefaultMaxUpstreamMsgBytes = 64 << 20
	DefaultIdleTimeout         = 15 * time.Minute
	DefaultHandshakeTimeout    = 10 * time.Second
	DefaultFirstMessageTimeout = 10 * time.Second
	DefaultRegisterTimeout     = 10 * time.Second
	DefaultKeepaliveMinTime    = 15 * time.Second
	DefaultKeepaliveTime       = 30 * time.Second
	DefaultKeepaliveTimeout    = 10 * time.Second
	DefaultDrainTimeout        = 5 * time.Second
	DefaultAuthFailureRate     = 1.0
	DefaultAuthFailureBurst    = 10
	DefaultAuthMaxSources      = 10000
	DefaultCertCheckInterval   = time.Second
)

// Identity passing modes of an upstream.
const (
	// IdentityForward passes the VM's own authorization header; the upstream (istiod) verifies
	// the token again (its JWT rules or a TokenReview).
	IdentityForward = "forward"
	// IdentityXFCC sends no VM credential; the verified identity goes in
	// x-forwarded-client-cert, which istiod trusts from TRUSTED_GATEWAY_CIDR.
	IdentityXFCC = "xfcc"
)

// Client certificate modes of the listener.
const (
	ClientCertRequest = "request" // asked for, verified per RPC by authn (trust domain aware)
	ClientCertRequire = "require" // the handshake fails without one that chains to a trust bundle
	ClientCertOff     = "off"     // not asked for: tokens only
)

// Config is the VM control endpoint, the "control:" section of the configuration file. Decode
// it with go.yaml.in/yaml/v3 (KnownFields); durations are strings such as "10s". Call
// SetDefaults, then Validate, then New.
type Config struct {
	// Address to listen on. Zero: :15012.
	Address string `yaml:"address"`
	// TLS is the serving certificate. Required.
	TLS TLSConfig `yaml:"tls"`
	// Upstreams: the control plane of each cluster. At least one.
	Upstreams []UpstreamConfig `yaml:"upstreams"`
	// AuthFailures rate-limits authentication failures per source address.
	AuthFailures AuthFailureConfig `yaml:"auth_failures"`
	// Limits on streams, messages and connections.
	Limits LimitsConfig `yaml:"limits"`
	// RegisterTimeout: how long an ADS stream with AUTO_REGISTER_GROUP is held until its
	// WorkloadEntry is written; after it the stream fails with Unavailable (the VM retries).
	// Zero: 10s.
	RegisterTimeout time.Duration `yaml:"register_timeout"`
	// DrainTimeout: on shutdown, how long open streams may continue. Zero: 5s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
}

// TLSConfig is the serving side of the listener.
type TLSConfig struct {
	// CertFile and KeyFile: PEM serving certificate (with its chain) and key. Required. The
	// certificate must name what VMs dial (istiod.istio-system.svc, or ISTIOD_SAN). Both are
	// re-read when they change.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCerts: request (default), require or off. With require, the handshake checks the
	// chain against authn's trust bundles, which (unlike CertFile) are read once, at start-up.
	ClientCerts string `yaml:"client_certs"`
	// CheckInterval: how often, at most, the files are checked for changes (on a handshake).
	// Zero: 1s.
	CheckInterval time.Duration `yaml:"check_interval"`
}

// UpstreamConfig is the control plane of one cluster.
type UpstreamConfig struct {
	// Cluster whose VMs (by their verified identity) go to this upstream. Required, unique.
	Cluster string `yaml:"cluster"`
	// Builtin: ewgate's own control plane and CA, reached in-process. Excludes Address.
	Builtin bool `yaml:"builtin"`
	// Address host:port of the control plane, e.g. istiod.istio-system.svc:15012.
	Address string `yaml:"address"`
	// CAFile: PEM bundle the upstream's certificate must chain to. Empty: system roots.
	CAFile string `yaml:"ca_file"`
	// ServerName checked in the upstream's certificate. Empty: the host of Address.
	ServerName string `yaml:"server_name"`
	// Plaintext: no TLS to the upstream (istiod's 15010 on loopback or a sidecar-secured hop).
	Plaintext bool `yaml:"plaintext"`
	// Identity: forward (default) or xfcc. Builtin upstreams always get the verified identity.
	Identity string `yaml:"identity"`
	// Connections: HTTP/2 connections shared by all VM streams to this upstream. Zero: 2.
	Connections int `yaml:"connections"`
	// ConnectTimeout of one connection attempt. Zero: 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// AuthFailureConfig is a token bucket per source address, drawn from by each failed
// authentication; while it is empty, RPCs from that address are refused (ResourceExhausted)
// without looking at their credentials.
type AuthFailureConfig struct {
	// Rate of refill, failures per second. Zero: 1. Negative: no limit.
	Rate float64 `yaml:"rate"`
	// Burst: failures allowed at once. Zero: 10.
	Burst int `yaml:"burst"`
	// MaxSources bounds the addresses tracked. Zero: 10000.
	MaxSources int `yaml:"max_sources"`
}

// LimitsConfig bounds what VMs can make ewgate hold.
type LimitsConfig struct {
	MaxStreams int `yaml:"max_streams"` // open streams in total; zero: 10000
	// MaxStreamsPerVM bounds the open streams of one VM: one identity and cluster from one
	// source address, and for ADS also one node ID (VMs behind one NAT address are told apart
	// by their node). All VMs of a WorkloadGroup share a service account, so a bound per
	// identity alone would cap the whole group. Zero: 32.
	MaxStreamsPerVM int `yaml:"max_streams_per_vm"`
	// MaxStreamsPerID is the former name of MaxStreamsPerVM (max_streams_per_identity), still
	// accepted; it now has the meaning of MaxStreamsPerVM. Setting both is an error.
	MaxStreamsPerID    int `yaml:"max_streams_per_identity"`
	MaxMessageBytes    int `yaml:"max_message_bytes"` // from a VM; zero: 4 MiB
	MaxUpstreamMsgSize int `yaml:"max_upstream_message_bytes"`
	// MaxHeaderBytes bounds the request metadata (HTTP/2 header list, as HPACK counts it) of
	// one VM call, read before anything is authenticated: a larger one resets the stream, and
	// a sender far over it loses its connection. A VM sends a token of a few KiB. Zero: 64 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxStreamsPerConnection: concurrent streams one VM connection may open (HTTP/2
	// SETTINGS_MAX_CONCURRENT_STREAMS); more are refused by HTTP/2. Zero: 100.
	MaxStreamsPerConnection int `yaml:"max_streams_per_connection"`
	// MaxConnections: open VM connections (TLS handshakes included). A connection over it is
	// closed as it is accepted, before TLS. Each holds one file descriptor. Zero: 10000 (the
	// configuration file's loader derives it from the open-file limit instead).
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerSource: open connections from one source address, enforced the same way.
	// Zero: 64.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
	// MaxAuthenticatingPerSource: calls from one source address whose credentials are being
	// verified at once (a verification can wait for a key fetch or a TokenReview); more are
	// refused with ResourceExhausted before their credentials are looked at. Zero: 64.
	MaxAuthenticatingPerSource int `yaml:"max_authenticating_per_source"`
	// IdleTimeout closes a VM connection with no open stream for this long. Zero: 15m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// HandshakeTimeout bounds the TLS and HTTP/2 handshake. Zero: 10s.
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// FirstMessageTimeout: an ADS stream must send its first request within this. Zero: 10s.
	FirstMessageTimeout time.Duration `yaml:"first_message_timeout"`
	// KeepaliveMinTime: a VM pinging more often is disconnected (GOAWAY too_many_pings).
	// Zero: 15s (pilot-agent pings every 30s).
	KeepaliveMinTime time.Duration `yaml:"keepalive_min_time"`
	// KeepaliveTime and KeepaliveTimeout: ewgate pings a quiet VM connection every
	// KeepaliveTime and closes it when no answer comes within KeepaliveTimeout. Zero: 30s, 10s.
	KeepaliveTime    time.Duration `yaml:"keepalive_time"`
	KeepaliveTimeout time.Duration `yaml:"keepalive_timeout"`
}

// SetDefaults fills every zero field that has a default. It is idempotent.
func (c *Config) SetDefaults() {
	field.Default(&c.Address, DefaultAddress)
	field.Default(&c.TLS.ClientCerts, ClientCertRequest)
	field.Default(&c.TLS.CheckInterval, DefaultCertCheckInterval)
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		field.Default(&u.Identity, IdentityForward)
		field.Default(&u.Connections, DefaultConnections)
		field.Default(&u.ConnectTimeout, DefaultConnectTimeout)
	}
	a := &c.AuthFailures
	field.Default(&a.Rate, DefaultAuthFailureRate)
	field.Default(&a.Burst, DefaultAuthFailureBurst)
	field.Default(&a.MaxSources, DefaultAuthMaxSources)
	l := &c.Limits
	field.Default(&l.MaxStreams, DefaultMaxStreams)
	if l.MaxStreamsPerVM == 0 && l.MaxStreamsPerID != 0 {
		l.MaxStreamsPerVM = l.MaxStreamsPerID // the former name
	}
	field.Default(&l.MaxStreamsPerVM, DefaultMaxStreamsPerVM)
	field.Default(&l.MaxHeaderBytes, DefaultMaxHeaderBytes)
	field.Default(&l.MaxStreamsPerConnection, DefaultMaxStreamsPerConn)
	field.Default(&l.MaxConnections, DefaultMaxConnections)
	field.Default(&l.MaxConnectionsPerSource, DefaultMaxConnsPerSource)
	field.Default(&l.MaxAuthenticatingPerSource, DefaultMaxAuthPerSource)
	field.Default(&l.MaxMessageBytes, DefaultMaxMessageBytes)
	field.Default(&l.MaxUpstreamMsgSize, DefaultMaxUpstreamMsgBytes)
	field.Default(&l.IdleTimeout, DefaultIdleTimeout)
	field.Default(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	field.Default(&l.FirstMessageTimeout, DefaultFirstMessageTimeout)
	field.Default(&l.KeepaliveMinTime, DefaultKeepaliveMinTime)
	field.Default(&l.KeepaliveTime, DefaultKeepaliveTime)
	field.Default(&l.KeepaliveTimeout, DefaultKeepaliveTimeout)
	field.Default(&c.RegisterTimeout, DefaultRegisterTimeout)
	field.Default(&c.DrainTimeout, DefaultDrainTimeout)
}

// Validate checks the config (after SetDefaults) and returns every problem at once, as
// field.Errors whose paths are relative to the control section (upstreams[1].address). Files are
// checked for existence, not for content.
func (c *Config) Validate() error {
	var errs field.Errors
	add := errs.Add
	if _, _, err := net.SplitHostPort(c.Address); err != nil {
		add("address", "%q is not host:port (for example :15012)", c.Address)
	}
	checkFile(add, "tls.cert_file", c.TLS.CertFile, true)
	checkFile(add, "tls.key_file", c.TLS.KeyFile, true)
	switch c.TLS.ClientCerts {
	case ClientCertRequest, ClientCertRequire, ClientCertOff:
	default:
		add("tls.client_certs", "must be request, require or off, got %q", c.TLS.ClientCerts)
	}
	positive(add, "tls.check_interval", c.TLS.CheckInterval)
	if len(c.Upstreams) == 0 {
		add("upstreams", "at least one upstream is required (for example {cluster: cluster1, builtin: true})")
	}
	seen := map[string]int{}
	builtins := 0
	for i := range c.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)
		u := &c.Upstreams[i]
		if j, dup := seen[u.Cluster]; dup {
			add(p+".cluster", "duplicates upstreams[%d].cluster", j)
		}
		seen[u.Cluster] = i
		if u.Builtin {
			builtins++
		}
		u.validate(p, add)
	}
	if builtins > 1 {
		add("upstreams", "at most one upstream may be builtin")
	}
	if c.AuthFailures.Rate > 0 && c.AuthFailures.Burst < 1 {
		add("auth_failures.burst", "must be at least 1")
	}
	if c.AuthFailures.MaxSources < 1 {
		add("auth_failures.max_sources", "must be at least 1")
	}
	c.Limits.validate(add)
	positive(add, "register_timeout", c.RegisterTimeout)
	positive(add, "drain_timeout", c.DrainTimeout)
	return errs.Err()
}

func (u *UpstreamConfig) validate(p string, add func(path, format string, args ...any)) {
	if u.Cluster == "" {
		add(p+".cluster", "required: the cluster (authn issuers[].cluster) whose VMs use this upstream")
	}
	switch {
	case u.Builtin && (u.Address != "" || u.CAFile != "" || u.ServerName != "" || u.Plaintext):
		add(p+".builtin", "a builtin upstream takes no address, ca_file, server_name or plaintext")
	case !u.Builtin && u.Address == "":
		add(p+".address", "required unless builtin: true (host:port of the cluster's istiod, e.g. istiod.istio-system.svc:15012)")
	case !u.Builtin:
		if _, port, err := net.SplitHostPort(u.Address); err != nil || port == "" || strings.Contains(u.Address, "/") {
			add(p+".address", "%q is not host:port", u.Address)
		}
	}
	if u.Plaintext && (u.CAFile != "" || u.ServerName != "") {
		add(p+".plaintext", "plaintext takes no ca_file or server_name")
	}
	checkFile(add, p+".ca_file", u.CAFile, false)
	switch u.Identity {
	case IdentityForward, IdentityXFCC:
	default:
		add(p+".identity", "must be forward or xfcc, got %q", u.Identity)
	}
	if u.Plaintext && u.Identity == IdentityForward {
		add(p+".plaintext", "would send the VMs' tokens in clear text: use TLS, or identity: xfcc")
	}
	if u.Connections < 1 || u.Connections > 64 {
		add(p+".connections", "must be between 1 and 64, got %d", u.Connections)
	}
	positive(add, p+".connect_timeout", u.ConnectTimeout)
}

func (l *LimitsConfig) validate(add func(path, format string, args ...any)) {
	if l.MaxStreams < 1 {
		add("limits.max_streams", "must be at least 1")
	}
	if l.MaxStreamsPerID != 0 && l.MaxStreamsPerID != l.MaxStreamsPerVM {
		add("limits.max_streams_per_identity", "is the former name of limits.max_streams_per_vm: set only max_streams_per_vm")
	}
	if l.MaxStreamsPerVM < 1 || l.MaxStreamsPerVM > l.MaxStreams {
		add("limits.max_streams_per_vm", "must be between 1 and limits.max_streams, got %d", l.MaxStreamsPerVM)
	}
	if l.MaxHeaderBytes < 4<<10 || l.MaxHeaderBytes > 16<<20 {
		add("limits.max_header_bytes", "must be between 4096 and 16777216, got %d (a VM's token and metadata need a few KiB)", l.MaxHeaderBytes)
	}
	if l.MaxStreamsPerConnection < 1 {
		add("limits.max_streams_per_connection", "must be at least 1, got %d", l.MaxStreamsPerConnection)
	}
	if l.MaxConnections < 1 {
		add("limits.max_connections", "must be at least 1, got %d", l.MaxConnections)
	}
	if l.MaxAuthenticatingPerSource < 1 {
		add("limits.max_authenticating_per_source", "must be at least 1, got %d", l.MaxAuthenticatingPerSource)
	}
	if l.MaxConnectionsPerSource < 1 || l.MaxConnectionsPerSource > l.MaxConnections {
		add("limits.max_connections_per_source", "must be between 1 and limits.max_connections, got %d", l.MaxConnectionsPerSource)
	}
	if l.MaxMessageBytes < 1024 || l.MaxMessageBytes > 1<<30 {
		add("limits.max_message_bytes", "must be between 1024 and 1073741824, got %d", l.MaxMessageBytes)
	}
	if l.MaxUpstreamMsgSize < 1024 || l.MaxUpstreamMsgSize > 1<<30 {
		add("limits.max_upstream_message_bytes", "must be between 1024 and 1073741824, got %d", l.MaxUpstreamMsgSize)
	}
	positive(add, "limits.idle_timeout", l.IdleTimeout)
	positive(add, "limits.handshake_timeout", l.HandshakeTimeout)
	positive(add, "limits.first_message_timeout", l.FirstMessageTimeout)
	if l.KeepaliveMinTime < time.Second {
		add("limits.keepalive_min_time", "must be at least 1s")
	}
	if l.KeepaliveTime < time.Second {
		add("limits.keepalive_time", "must be at least 1s")
	}
	positive(add, "limits.keepalive_timeout", l.KeepaliveTimeout)
}

func positive(add func(path, format string, args ...any), path string, d time.Duration) {
	if d <= 0 {
		add(path, "must be a positive duration, got %s", d)
	}
}

func checkFile(add func(path, format string, args ...any), path, name string, required bool) {
	if name == "" {
		if required {
			add(path, "required")
		}
		return
	}
	if _, err := os.Stat(name); err != nil {
		add(path, field.CannotRead+"%v", err)
	}
}
