package e2e

import (
	"context"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/worker"
)

// reservationRun is what the event stream shows of one reservation's request.
type reservationRun struct {
	reservation int64
	seq         uint64
	computer    int64
	image       int64
	results     []*messages.Result
	// beginsAfterResult counts step begins stored after the first result.
	beginsAfterResult int
	// first and last are the first begin and the result: the request's time on its slot.
	first, last time.Time
}

// readRuns replays every event once and groups them by reservation.
func (s *site) readRuns(t *testing.T, want map[int64]*reservationRun) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := eventlog.Read(ctx, s.js.JS, eventlog.Filter{}, func(ev eventlog.Event) error {
		switch {
		case ev.Loadlog != nil:
			r := want[ev.Loadlog.ReservationID]
			if r == nil || ev.Loadlog.RequestSeq != r.seq {
				return nil
			}
			if len(r.results) > 0 && ev.Loadlog.Phase == messages.PhaseBegin {
				r.beginsAfterResult++
			}
			if ev.Loadlog.Phase == messages.PhaseBegin && r.first.IsZero() {
				r.first = ev.Loadlog.Time
			}
		case ev.Result != nil:
			if r := want[ev.Result.ReservationID]; r != nil && ev.Result.RequestSeq == r.seq {
				r.results = append(r.results, ev.Result)
				r.last = ev.Result.Time
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Three management nodes, 100 reservations over 12 slots, one node frozen (SIGSTOP)
// twice for longer than AckWait and the lease TTL: one result per reservation, no
// step begins after a result, no two requests on one slot at once, and every slot's VM
// carries the image of the newest request it served.
func TestPausedNodeUnderLoad(t *testing.T) {
	s := startSite(t, 2, 6)
	const n = 100
	nodes := []string{"pause-a", "pause-b", "pause-c"}
	frozen := s.startWorkerProcess(t, nodes[0])
	s.startWorkerProcess(t, nodes[1])
	s.startWorkerProcess(t, nodes[2])
	t.Cleanup(func() { _ = frozen.Process.Signal(syscall.SIGCONT) })

	runs := map[int64]*reservationRun{}
	began := time.Now()
	for i := range n {
		sl := s.lab.Slots[i%len(s.lab.Slots)]
		im := s.lab.Images[(i/len(s.lab.Slots))%len(s.lab.Images)]
		res := int64(9000 + i)
		kind := messages.KindNew
		if i%2 == 1 {
			kind = messages.KindReload
		}
		seq := s.submit(t, s.lab.Request(devlab.RequestSpec{Kind: kind, Slot: sl, Image: im, Reservation: res, Request: res + 10000}))
		runs[res] = &reservationRun{reservation: res, seq: seq, computer: sl.Computer.ID, image: im.ID}
	}
	// Two pauses of 12 s (AckWait 10 s, lease TTL 5 s), 8 s apart.
	for range 2 {
		time.Sleep(4 * time.Second)
		signal(t, frozen, syscall.SIGSTOP)
		time.Sleep(12 * time.Second)
		signal(t, frozen, syscall.SIGCONT)
	}
	for _, r := range runs {
		s.result(t, r.reservation, r.seq, 4*time.Minute)
	}
	time.Sleep(3 * time.Second) // anything a resumed node would still do
	t.Logf("%d reservations done in %s", n, time.Since(began).Round(time.Second))
	s.readRuns(t, runs)

	outcomes := map[string]int{}
	newest := map[int64]*reservationRun{} // computer → newest request that succeeded
	bySlot := map[int64][]*reservationRun{}
	for _, r := range runs {
		if len(r.results) != 1 {
			t.Errorf("reservation %d: %d results", r.reservation, len(r.results))
			continue
		}
		res := r.results[0]
		outcomes[string(res.Outcome)+"/"+res.ErrorCode]++
		if r.beginsAfterResult > 0 {
			t.Errorf("reservation %d: %d steps began after its result", r.reservation, r.beginsAfterResult)
		}
		if res.Outcome == messages.OutcomeSuccess {
			if cur := newest[r.computer]; cur == nil || r.seq > cur.seq {
				newest[r.computer] = r
			}
			bySlot[r.computer] = append(bySlot[r.computer], r)
		} else if res.ErrorCode != worker.CodeSuperseded {
			t.Errorf("reservation %d: %+v", r.reservation, res)
		}
	}
	t.Logf("outcomes: %v", outcomes)
	overlaps := 0
	for c, rs := range bySlot {
		sort.Slice(rs, func(i, j int) bool { return rs[i].first.Before(rs[j].first) })
		for i := 1; i < len(rs); i++ {
			if rs[i].first.Before(rs[i-1].last) {
				overlaps++
				t.Errorf("computer %d: reservation %d began %s before reservation %d's result %s", c, rs[i].reservation,
					rs[i].first.Format(time.StampMilli), rs[i-1].reservation, rs[i-1].last.Format(time.StampMilli))
			}
		}
	}
	checked := 0
	for _, sl := range s.lab.Slots {
		r := newest[sl.Computer.ID]
		if r == nil {
			t.Errorf("slot %s: no successful request", sl.Computer.ShortName)
			continue
		}
		vms := slotVMs(t, sl)
		if len(vms) != 1 || vms[0].Extra["vcl.image_id"] != strconv.FormatInt(r.image, 10) || vms[0].Extra["vcl.reservation_id"] != strconv.FormatInt(r.reservation, 10) {
			t.Errorf("slot %s: VMs %+v, want one of image %d for reservation %d", sl.Computer.ShortName, vms, r.image, r.reservation)
		}
		if rec := s.slotRecord(t, sl); rec.Seq != r.seq {
			t.Errorf("slot %s: served record seq %d, want %d", sl.Computer.ShortName, rec.Seq, r.seq)
		}
		checked++
	}
	t.Logf("%d slots carry their newest request's image; %d overlaps", checked, overlaps)
	if outcomes["success/"] < n*9/10 {
		t.Errorf("only %d of %d succeeded", outcomes["success/"], n)
	}
}
