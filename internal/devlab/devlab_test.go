package devlab

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/guestlab"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/worker"
)

type nopSink struct{}

func (nopSink) Loadlog(context.Context, worker.StepEvent) error { return nil }

// A slot's guest follows its VM's stops inside the host's call: when PowerOff, Reset
// or Unregister returns, the guest is already down (or rebooted), as on ESX. Before,
// it followed a watch poll later, and the old guest of a reloaded slot answered the
// new VM's readiness probe.
func TestGuestIsDownWhenPowerOffReturns(t *testing.T) {
	for _, guests := range []string{"namespace", "none"} {
		t.Run(guests, func(t *testing.T) {
			if guests == "namespace" {
				if err := guestlab.Check(); err != nil {
					t.Skip(err)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			lab, err := Start(ctx, Config{Hosts: 1, SlotsPerHost: 1, Dir: t.TempDir(), Guests: guests})
			if err != nil {
				t.Fatal(err)
			}
			defer lab.Close()
			h, closeHosts, err := lab.Handler(zerolog.Nop(), nil, flow.BootWait{Timeout: time.Minute, Interval: 50 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer closeHosts(context.Background())
			s := lab.Slots[0]
			running := func() bool {
				if s.Guest != nil {
					return s.Guest.Running()
				}
				return lab.sims[s.Computer.ShortName].up() == nil
			}
			req := lab.Request(RequestSpec{Kind: messages.KindNew, Slot: s, Image: lab.Images[0], Reservation: 1, Request: 1})
			if _, err := h.Handle(ctx, &worker.Job{Request: req, Seq: 1, Delivery: 1, MaxDeliver: 1, Events: nopSink{}, Worker: "t"}); err != nil {
				t.Fatal(err)
			}
			if !running() {
				t.Fatal("guest not running after the load")
			}
			esx, err := hypervisor.New(s.Host.HostConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer esx.Close(context.Background())
			slot := hypervisor.Slot{ComputerID: s.Computer.ID, ShortName: s.Computer.ShortName}

			if s.Guest != nil {
				pid, err := s.Guest.InitPID()
				if err != nil {
					t.Fatal(err)
				}
				if err := esx.Reset(ctx, slot); err != nil {
					t.Fatal(err)
				}
				if now, err := s.Guest.InitPID(); err != nil || now == pid {
					t.Fatalf("after Reset returned: guest init %d (was %d), %v; want a rebooted guest", now, pid, err)
				}
			}
			if err := esx.PowerOff(ctx, slot); err != nil {
				t.Fatal(err)
			}
			if running() {
				t.Fatal("guest still up when PowerOff returned")
			}
			if err := esx.PowerOn(ctx, slot); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for !running() {
				if time.Now().After(deadline) {
					t.Fatal("guest did not boot after PowerOn")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := esx.Remove(ctx, slot, hypervisor.ProfileFromMessage(req.VMHost.Profile)); err != nil {
				t.Fatal(err)
			}
			if running() {
				t.Fatal("guest still up when Remove returned")
			}
		})
	}
}
