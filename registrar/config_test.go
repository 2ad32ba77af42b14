package registrar_test

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/registrar"
)

func TestConfigDefaults(t *testing.T) {
	var c registrar.Config
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if c.Instance == "" || c.GracePeriod.D() != 10*time.Second || c.AddressPolicy != "claimed" ||
		c.DeleteRate != 20 || c.DeleteBurst != 20 || c.Workers != 4 || c.LeaseDuration.D() != 30*time.Second ||
		c.LeaseRenew.D() != 10*time.Second || c.SweepInterval.D() != 30*time.Second || c.LeaseNamespace != "istio-system" ||
		len(c.ReservedLabels) != 3 {
		t.Fatalf("defaults %+v", c)
	}
	empty := registrar.Config{ReservedLabels: []string{}}
	empty.SetDefaults()
	if len(empty.ReservedLabels) != 0 {
		t.Fatal("an explicit empty reserved_labels list was replaced by the default")
	}
}

// TestConfigYAML parses the block the top-level config embeds under `registrar:`.
func TestConfigYAML(t *testing.T) {
	const doc = `
instance: gw-eu-1
grace_period: 45s
address_policy: claimed_in_cidrs
allowed_cidrs: [10.0.0.0/8, "fd00::/8"]
reserved_labels: ["istio.io/*", owner]
delete_rate: 5
lease_duration: 1m
sweep_interval: 2m30s
`
	var c registrar.Config
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.GracePeriod.D() != 45*time.Second || c.LeaseDuration.D() != time.Minute || c.LeaseRenew.D() != 20*time.Second ||
		c.SweepInterval.D() != 150*time.Second || c.DeleteBurst != 5 || len(c.AllowedCIDRs) != 2 {
		t.Fatalf("parsed %+v", c)
	}
	out, err := yaml.Marshal(c)
	if err != nil || !strings.Contains(string(out), "grace_period: 45s") {
		t.Fatalf("durations not written as strings: %s %v", out, err)
	}
	bad := yaml.NewDecoder(strings.NewReader("grace_period: 10\n"))
	if err := bad.Decode(&c); err == nil || !strings.Contains(err.Error(), "duration") {
		t.Fatalf("a bare number for a duration: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		change func(c *registrar.Config)
		want   string
	}{
		{func(c *registrar.Config) { c.Instance = "GW_1" }, "instance:"},
		{func(c *registrar.Config) { c.AddressPolicy = "nat" }, "address_policy:"},
		{func(c *registrar.Config) { c.AddressPolicy = registrar.AddressClaimedInCIDRs }, "allowed_cidrs: required"},
		{func(c *registrar.Config) { c.AllowedCIDRs = []string{"10.0.0.0/8"} }, "allowed_cidrs: only used"},
		{func(c *registrar.Config) {
			c.AddressPolicy, c.AllowedCIDRs = registrar.AddressClaimedInCIDRs, []string{"10.0.0.0/8", "ten"}
		}, "allowed_cidrs[1]:"},
		{func(c *registrar.Config) { c.ReservedLabels = []string{"a*b*"} }, "reserved_labels[0]:"},
		{func(c *registrar.Config) { c.GracePeriod = -1 }, "grace_period:"},
		{func(c *registrar.Config) { c.LeaseDuration = registrar.Duration(1500 * time.Millisecond) }, "lease_duration: must be whole seconds"},
		{func(c *registrar.Config) { c.LeaseRenew = c.LeaseDuration }, "lease_renew:"},
		{func(c *registrar.Config) { c.DeleteRate = -1 }, "delete_rate:"},
		{func(c *registrar.Config) { c.Workers = 1000 }, "workers:"},
		{func(c *registrar.Config) { c.RetryMax = registrar.Duration(time.Millisecond) }, "retry_max:"},
	}
	for _, tc := range cases {
		var c registrar.Config
		c.SetDefaults()
		tc.change(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("got %v, want an error containing %q", err, tc.want)
		}
	}
	if _, err := registrar.New(registrar.Config{AddressPolicy: "nat"}, registrar.Options{Store: registrar.NewMemoryStore()}); err == nil {
		t.Error("New accepted an invalid config")
	}
	if _, err := registrar.New(registrar.Config{}, registrar.Options{}); err == nil {
		t.Error("New accepted no store")
	}
}
