package main

import (
	"testing"
)

// The example worker configuration in deployments/ stays valid: it loads strictly
// (unknown fields are errors) and selects the real flows.
func TestExampleWorkerConfigLoads(t *testing.T) {
	t.Setenv("VCLQ_CONFIG", "")
	c, err := loadWorkerConfig([]string{"--config", "../../deployments/examples/worker.json"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.resolveHandler(); err != nil { // as runWorker does once the flags are parsed
		t.Fatal(err)
	}
	if c.Handler != "flow" || c.Flow == nil || len(c.Flow.Hosts) != 2 || c.Flow.Hosts[0].Thumbprint == "" || c.Concurrency != 8 {
		t.Fatalf("example config loaded as %+v", c)
	}
	if hc := c.Flow.HostConfigs(); hc[0].PasswordFile != "/etc/vclq/esx-01.password" || hc[0].Insecure {
		t.Fatalf("host config %+v", hc[0])
	}
}
