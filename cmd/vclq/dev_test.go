package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/vclq/vclq/internal/demo"
)

// `vclq dev --once --requests N --json` runs N new reservations through the whole
// embedded system and exits 0 only if all succeeded.
func TestDevOnceRunsRequests(t *testing.T) {
	for _, guests := range []string{"auto", "none"} {
		t.Run(guests, func(t *testing.T) {
			code, out, errs := vclqRun(t, "", "dev", "--once", "--requests", "5", "--json", "--hosts", "1", "--slots", "2", "--guests", guests)
			if code != exitOK {
				t.Fatalf("exit %d\n%s\n%s", code, out, errs)
			}
			// With --json, standard output carries JSON objects only, one per line
			// (jq reads it); the human lines go to standard error.
			if !strings.Contains(errs, "NATS_URL=nats://127.0.0.1:") || !strings.Contains(errs, "VCSIM_URL=https://") {
				t.Errorf("dev did not print its URLs to stderr:\n%s", errs)
			}
			if guests == "none" && !strings.Contains(errs, "GUESTS=simulated") {
				t.Errorf("simulated guests not said plainly:\n%s", errs)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			decoded := 0
			for i, line := range lines {
				var obj map[string]any
				if err := json.Unmarshal([]byte(line), &obj); err != nil {
					t.Errorf("stdout line %d is not a JSON object: %v: %q", i+1, err, line)
					continue
				}
				decoded++
			}
			t.Logf("%d of %d stdout lines decoded as JSON objects", decoded, len(lines))
			var s demo.Summary
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
				t.Fatalf("summary: %v\n%s", err, out)
			}
			if s.Requests != 5 || s.Succeeded != 5 || s.Failed != 0 {
				t.Fatalf("summary %+v", s)
			}
			slots := map[string]int{}
			for _, o := range s.Outcomes {
				if o.Result == nil || o.Result.RequestState != "reserved" || o.Result.ImageID == 0 {
					t.Errorf("outcome %+v", o)
				}
				slots[o.Slot]++
			}
			if len(slots) != 2 {
				t.Errorf("requests not spread over both slots: %v", slots)
			}
		})
	}
}
