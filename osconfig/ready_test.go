package osconfig_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/osconfig"
)

// WaitForResponse is bounded by its attempt count and deadline, and by the caller's
// context; no guest needed (the dialer refuses everything).
func TestWaitForResponseBounds(t *testing.T) {
	dir := t.TempDir()
	key, _ := writeKey(dir, "mgmt")
	tg := osconfig.Target{Slot: "vclv9", IP: "198.51.100.249", ManagementIP: "198.51.100.1"}
	tests := []struct {
		name                            string
		initialDelay, timeout, interval time.Duration
		cancelAfter                     time.Duration
		wantErr                         []error
		maxDials                        int32
		maxTook                         time.Duration
	}{
		{name: "deadline and counter", timeout: 300 * time.Millisecond, interval: 50 * time.Millisecond,
			wantErr: []error{osconfig.ErrNotResponding, wait.ErrTimeout}, maxDials: 7, maxTook: 2 * time.Second},
		{name: "initial delay longer than timeout", initialDelay: time.Hour, timeout: 100 * time.Millisecond, interval: 10 * time.Millisecond,
			wantErr: []error{osconfig.ErrNotResponding, wait.ErrTimeout}, maxDials: 0, maxTook: 2 * time.Second},
		{name: "caller cancels", timeout: time.Hour, interval: time.Second, cancelAfter: 100 * time.Millisecond,
			wantErr: []error{osconfig.ErrNotResponding, context.Canceled}, maxDials: 2, maxTook: 2 * time.Second},
		{name: "invalid interval", timeout: time.Second, interval: 0, wantErr: []error{osconfig.ErrInvalidInput}, maxDials: 0, maxTook: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := &countingDialer{refuse: true}
			c, err := osconfig.New(osconfig.Config{KeyFile: key, KnownHostsFile: filepath.Join(dir, "kh-"+strings.ReplaceAll(tc.name, " ", "-")), Dialer: d})
			if err != nil {
				t.Fatal(err)
			}
			l, err := c.Linux(tg, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tc.cancelAfter > 0 {
				time.AfterFunc(tc.cancelAfter, cancel)
			}
			start := time.Now()
			err = l.WaitForResponse(ctx, tc.initialDelay, tc.timeout, tc.interval)
			for _, w := range tc.wantErr {
				if !errors.Is(err, w) {
					t.Errorf("err = %v, want %v", err, w)
				}
			}
			if n := d.n.Load(); n > tc.maxDials {
				t.Errorf("%d dials, want at most %d", n, tc.maxDials)
			}
			if took := time.Since(start); took > tc.maxTook {
				t.Errorf("took %s", took)
			}
			if errors.Is(err, osconfig.ErrNotResponding) && !strings.Contains(err.Error(), "attempts") {
				t.Errorf("error %q does not count attempts", err)
			}
		})
	}
}
