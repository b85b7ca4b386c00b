package guestlab

import (
	"context"
	"time"
)

// TB is the part of testing.TB that NewForTest uses.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Logf(format string, args ...any)
}

// NewForTest returns a lab for a test, or skips the test (with the reason) when a lab
// cannot run here. The lab is closed in t.Cleanup. Set VCLQ_REQUIRE_GUESTLAB=1 (CI) to
// fail instead of skipping.
func NewForTest(t TB, cfg Config) *Lab {
	t.Helper()
	if err := Check(); err != nil {
		if requireLab() {
			t.Fatalf("guest lab required (VCLQ_REQUIRE_GUESTLAB=1) but %v", err)
		}
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := New(ctx, cfg)
	if err != nil {
		t.Fatalf("guestlab.New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Logf("guestlab close: %v", err)
		}
	})
	return l
}

// NewGuestForTest creates and boots a guest with img and waits until its sshd listens
// (bounded: 20 s), failing the test on error. It is stopped by the lab's cleanup.
func NewGuestForTest(t TB, l *Lab, name string, img ImageInfo) *Guest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := l.NewGuest(ctx, name)
	if err != nil {
		t.Fatalf("NewGuest %s: %v", name, err)
	}
	if err := g.Boot(ctx, img); err != nil {
		t.Fatalf("Boot %s: %v", name, err)
	}
	if err := g.WaitListening(ctx, 20*time.Second); err != nil {
		t.Fatalf("guest %s: %v\nsshd log:\n%s", name, err, g.Log())
	}
	return g
}
