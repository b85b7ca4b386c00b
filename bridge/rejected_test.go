package bridge

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

// A rejected result (docs/messages.md, "The rejected-message convention") fails the
// request in VCL, so that the web UI does not show it pending for ever, and leaves the
// computer as it is: nothing touched it. A result of an older worker that left
// request_state "" is read the same way.
func TestRejectedResultFailsRequestLeavesComputer(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		cases := []struct {
			name, requestState string
			computer           int64
		}{
			{"request_state failed", messages.StateFailed, 110},
			{"request_state empty (older worker)", "", 111},
		}
		ids := map[int64][2]int64{}
		for _, c := range cases {
			q, rs := s.add(req{state: "new", computer: c.computer})
			ids[c.computer] = [2]int64{q, rs}
		}
		b := newBridge(t, s, j, Config{})
		if _, err := b.PollOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		msgs := byReservation(queued(t, j))
		before := map[int64]string{}
		for i, c := range cases {
			m := msgs[ids[c.computer][1]]
			if m == nil {
				t.Fatalf("reservation %d not queued", ids[c.computer][1])
			}
			before[c.computer] = s.computerState(c.computer)
			r := resultEvent(m, uint64(i+1), messages.OutcomeRejected, c.requestState, "")
			r.ErrorCode, r.Error = "invalid", "invalid message: computer.hostname: not a hostname"
			sendResult(t, j, r)
		}
		stop, _ := run(t, b)
		defer stop()
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				q, rs := ids[c.computer][0], ids[c.computer][1]
				testutil.WaitFor(t, 20*time.Second, 50*time.Millisecond, func() error {
					if got := s.requestState(q); !strings.HasPrefix(got, "failed/") {
						return fmt.Errorf("request %s", got)
					}
					return nil
				})
				got := s.computerState(c.computer)
				rows := s.loadlog(rs)
				t.Logf("request %s, computer %s (was %s), loadlog %q", s.requestState(q), got, before[c.computer], rows)
				if got != before[c.computer] {
					t.Errorf("computer state %s, was %s: a rejected request must leave the computer alone", got, before[c.computer])
				}
				if !slices.ContainsFunc(rows, func(r string) bool { return strings.HasPrefix(r, "failed:invalid:") }) {
					t.Errorf("no failed loadlog row naming the rejection: %q", rows)
				}
			})
		}
	})
}
