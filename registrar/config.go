package registrar

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// Address policies: which address a registered VM's WorkloadEntry gets.
const (
	// AddressClaimed is istiod's behaviour: the first of the VM's INSTANCE_IPS.
	AddressClaimed = "claimed"
	// AddressObserved is the source address of the VM's connection, for VMs behind NAT
	// (istio#39519, istio#32462).
	AddressObserved = "observed"
	// AddressClaimedInCIDRs is the claimed address, refused unless inside AllowedCIDRs.
	AddressClaimedInCIDRs = "claimed_in_cidrs"
)

// Config is the registrar's part of the gateway configuration, under `registrar:`. The zero value
// after SetDefaults is a working configuration.
type Config struct {
	// Instance names this gateway replica: the value of istio.io/workloadController on the
	// entries it owns and the name of its Lease. Empty: the host name.
	Instance string `yaml:"instance"`
	// GracePeriod is how long an entry outlives the last stream of its VM. Zero: 10s (istiod's).
	GracePeriod Duration `yaml:"grace_period"`
	// AddressPolicy is one of claimed (default), observed, claimed_in_cidrs.
	AddressPolicy string `yaml:"address_policy"`
	// AllowedCIDRs restricts claimed addresses under claimed_in_cidrs (required there).
	AllowedCIDRs []string `yaml:"allowed_cidrs"`
	// ReservedLabels are label keys a VM may not set through LABELS; "prefix/*" matches every
	// key with that prefix. Nil: istio.io/*, topology.istio.io/*, security.istio.io/*. An
	// explicit empty list reserves nothing.
	ReservedLabels []string `yaml:"reserved_labels"`
	// DeleteRate caps entry deletions per second across the replica. Zero: 20 (istiod's).
	DeleteRate float64 `yaml:"delete_rate"`
	// DeleteBurst is the delete rate limiter's burst. Zero: DeleteRate rounded up.
	DeleteBurst int `yaml:"delete_burst"`
	// Workers is the number of concurrent store writers. Zero: 4.
	Workers int `yaml:"workers"`
	// RetryBase and RetryMax bound the per-entry exponential backoff. Zero: 100ms and 30s.
	RetryBase Duration `yaml:"retry_base"`
	RetryMax  Duration `yaml:"retry_max"`
	// LeaseNamespace holds the replicas' Leases. Empty: istio-system.
	LeaseNamespace string `yaml:"lease_namespace"`
	// LeaseDuration is how long a replica's Lease lasts unrenewed. Zero: 30s.
	LeaseDuration Duration `yaml:"lease_duration"`
	// LeaseRenew is how often a replica renews its Lease. Zero: LeaseDuration / 3.
	LeaseRenew Duration `yaml:"lease_renew"`
	// SweepInterval is how often all entries are checked for dead owners and missed deletes.
	// Zero: 30s.
	SweepInterval Duration `yaml:"sweep_interval"`
}

// DefaultReservedLabels are the label keys VMs may not set by default.
var DefaultReservedLabels = []string{"istio.io/*", "topology.istio.io/*", "security.istio.io/*"}

// SetDefaults fills every zero field with its default.
func (c *Config) SetDefaults() {
	if c.Instance == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "ewgate"
		}
		c.Instance = strings.ToLower(h)
	}
	field.Default(&c.GracePeriod, Duration(10*time.Second))
	field.Default(&c.AddressPolicy, AddressClaimed)
	if c.ReservedLabels == nil {
		c.ReservedLabels = append([]string(nil), DefaultReservedLabels...)
	}
	field.Default(&c.DeleteRate, 20)
	field.Default(&c.DeleteBurst, max(1, int(c.DeleteRate+0.999)))
	field.Default(&c.Workers, 4)
	field.Default(&c.RetryBase, Duration(100*time.Millisecond))
	field.Default(&c.RetryMax, Duration(30*time.Second))
	field.Default(&c.LeaseNamespace, "istio-system")
	field.Default(&c.LeaseDuration, Duration(30*time.Second))
	field.Default(&c.LeaseRenew, Duration(c.LeaseDuration.D()/3))
	field.Default(&c.SweepInterval, Duration(30*time.Second))
}

// Validate checks a defaulted Config and returns every problem at once, as field.Errors whose
// paths are relative to the registrar section (allowed_cidrs[0]).
func (c *Config) Validate() error {
	var errs field.Errors
	bad := errs.Add
	if !validName(c.Instance, 253) {
		bad("instance", "%q is not a valid Kubernetes name (lower case alphanumerics, '-', '.')", c.Instance)
	}
	switch c.AddressPolicy {
	case AddressClaimed, AddressObserved:
		if len(c.AllowedCIDRs) > 0 {
			bad("allowed_cidrs", "only used with address_policy %s", AddressClaimedInCIDRs)
		}
	case AddressClaimedInCIDRs:
		if len(c.AllowedCIDRs) == 0 {
			bad("allowed_cidrs", "required with address_policy %s", AddressClaimedInCIDRs)
		}
	default:
		bad("address_policy", "%q: want %s, %s or %s", c.AddressPolicy, AddressClaimed, AddressObserved, AddressClaimedInCIDRs)
	}
	for i, s := range c.AllowedCIDRs {
		if _, err := netip.ParsePrefix(s); err != nil {
			bad(fmt.Sprintf("allowed_cidrs[%d]", i), "%q is not a CIDR", s)
		}
	}
	for i, s := range c.ReservedLabels {
		if s == "" || strings.Contains(strings.TrimSuffix(s, "*"), "*") {
			bad(fmt.Sprintf("reserved_labels[%d]", i), "%q: want a label key or a prefix ending in *", s)
		}
	}
	positive := map[string]time.Duration{
		"grace_period": c.GracePeriod.D(), "retry_base": c.RetryBase.D(), "retry_max": c.RetryMax.D(),
		"lease_duration": c.LeaseDuration.D(), "lease_renew": c.LeaseRenew.D(), "sweep_interval": c.SweepInterval.D(),
	}
	for _, f := range []string{"grace_period", "retry_base", "retry_max", "lease_duration", "lease_renew", "sweep_interval"} {
		if positive[f] <= 0 {
			bad(f, "must be positive, got %s", positive[f])
		}
	}
	if c.LeaseDuration.D()%time.Second != 0 {
		bad("lease_duration", "must be whole seconds (a Lease counts seconds), got %s", c.LeaseDuration.D())
	}
	if c.LeaseRenew >= c.LeaseDuration {
		bad("lease_renew", "must be shorter than lease_duration (%s), got %s", c.LeaseDuration.D(), c.LeaseRenew.D())
	}
	if c.RetryMax < c.RetryBase {
		bad("retry_max", "must not be shorter than retry_base")
	}
	if c.DeleteRate <= 0 {
		bad("delete_rate", "must be positive, got %v", c.DeleteRate)
	}
	if c.DeleteBurst < 1 {
		bad("delete_burst", "must be at least 1, got %d", c.DeleteBurst)
	}
	if c.Workers < 1 || c.Workers > 256 {
		bad("workers", "must be 1..256, got %d", c.Workers)
	}
	return errs.Err()
}

// Duration is a time.Duration written in YAML as a Go duration string ("10s", "1m30s").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalYAML writes d as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// UnmarshalYAML reads a duration string. A bad one is a *yaml.TypeError, which the decoder
// collects and goes on, so that a file's other problems are reported with it.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: want a duration like \"10s\"", n.Line)}}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration like \"10s\"", n.Line, s)}}
	}
	*d = Duration(v)
	return nil
}
