// Package demo drives a simulated site through NATS the way a VCL site would: it
// publishes reservations, follows their loadlog events live and collects their
// results. `vclq dev` runs it.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/messages"
)

// Outcome is what one request came to.
type Outcome struct {
	Reservation int64            `json:"reservation"`
	Kind        messages.Kind    `json:"kind"`
	Slot        string           `json:"slot"`
	Seq         uint64           `json:"seq"`
	Result      *messages.Result `json:"result,omitempty"`
	Seconds     float64          `json:"seconds"`
}

// Summary of a demo run.
type Summary struct {
	Requests  int       `json:"requests"`
	Succeeded int       `json:"succeeded"`
	Failed    int       `json:"failed"`
	Seconds   float64   `json:"seconds"`
	Outcomes  []Outcome `json:"outcomes"`
}

// Runner publishes requests and waits for their results.
type Runner struct {
	JS  jetstream.JetStream
	NC  *nats.Conn
	Lab *devlab.Lab
	Out io.Writer // live progress lines; nil for none
	// Timeout bounds the wait for one request's result.
	Timeout time.Duration

	mu      sync.Mutex
	waiting map[uint64]chan *messages.Result
	started map[uint64]time.Time
	nextID  int64
}

// Start subscribes to the events. Call it once before Submit.
func (r *Runner) Start(ctx context.Context) error {
	r.waiting = map[uint64]chan *messages.Result{}
	r.started = map[uint64]time.Time{}
	r.nextID = time.Now().Unix()%100000*100 + 1
	if r.Timeout <= 0 {
		r.Timeout = 5 * time.Minute
	}
	sub, err := r.NC.Subscribe("vcl.events.>", func(m *nats.Msg) {
		switch {
		case strings.HasPrefix(m.Subject, messages.SubjectResultPrefix):
			res, err := messages.DecodeResult(m.Data)
			if err != nil {
				return
			}
			r.mu.Lock()
			ch := r.waiting[res.RequestSeq]
			r.mu.Unlock()
			if ch != nil {
				select {
				case ch <- res:
				default:
				}
			}
		case r.Out != nil:
			l, err := messages.DecodeLoadlog(m.Data)
			if err != nil || l.Phase == messages.PhaseBegin {
				return
			}
			info := ""
			if l.Info != "" {
				info = "  " + l.Info
			}
			r.printf("  res %-6d %-8s %2d %-18s %-5s %6.2fs%s\n", l.ReservationID, l.Kind, l.Step, l.Name, l.Phase, float64(l.DurationMS)/1000, info)
		}
	})
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); _ = sub.Unsubscribe() }()
	return nil
}

func (r *Runner) printf(format string, args ...any) {
	if r.Out == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.Out, format, args...)
}

// NextReservation hands out demo reservation ids.
func (r *Runner) NextReservation() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextID++
	return r.nextID
}

// Do publishes one request and waits for its result.
func (r *Runner) Do(ctx context.Context, req *messages.Request) (Outcome, error) {
	o := Outcome{Reservation: req.Reservation.ID, Kind: req.Kind, Slot: req.Computer.ShortName}
	data, err := json.Marshal(req)
	if err != nil {
		return o, err
	}
	ch := make(chan *messages.Result, 1)
	start := time.Now()
	r.mu.Lock() // hold the lock over the publish so the result cannot beat the registration
	ack, err := r.JS.Publish(ctx, req.Kind.Subject(), data, jetstream.WithMsgID(req.MsgID()+"-"+fmt.Sprint(time.Now().UnixNano())))
	if err == nil {
		r.waiting[ack.Sequence] = ch
	}
	r.mu.Unlock()
	if err != nil {
		return o, fmt.Errorf("publish %s for reservation %d: %w", req.Kind, req.Reservation.ID, err)
	}
	o.Seq = ack.Sequence
	defer func() {
		r.mu.Lock()
		delete(r.waiting, ack.Sequence)
		r.mu.Unlock()
	}()
	r.printf("→ reservation %d: %s on %s (request #%d)\n", req.Reservation.ID, req.Kind, req.Computer.ShortName, ack.Sequence)
	select {
	case res := <-ch:
		o.Result, o.Seconds = res, time.Since(start).Seconds()
		line := fmt.Sprintf("← reservation %d: %s %s in %.1fs: request %s, computer %s", req.Reservation.ID, req.Kind, res.Outcome, o.Seconds, res.RequestState, res.ComputerState)
		if res.Error != "" {
			line += " — " + res.Error
		}
		r.printf("%s\n", line)
		return o, nil
	case <-time.After(r.Timeout):
		return o, fmt.Errorf("reservation %d %s: no result within %s", req.Reservation.ID, req.Kind, r.Timeout)
	case <-ctx.Done():
		return o, context.Cause(ctx)
	}
}

// Lifecycle runs one reservation's whole life on a slot: new → reserved → reclaim.
func (r *Runner) Lifecycle(ctx context.Context, slot *devlab.Slot, img devlab.ImageSpec, remoteIP string) ([]Outcome, error) {
	res := r.NextReservation()
	users := []messages.User{{ID: res, Login: fmt.Sprintf("user%d", res%100000), UID: 20000 + res%10000}}
	var out []Outcome
	for _, spec := range []devlab.RequestSpec{
		{Kind: messages.KindNew},
		{Kind: messages.KindReserved, Users: users, RemoteIP: remoteIP},
		{Kind: messages.KindReclaim, Users: users},
	} {
		spec.Slot, spec.Image, spec.Reservation, spec.Request = slot, img, res, res
		o, err := r.Do(ctx, r.Lab.Request(spec))
		out = append(out, o)
		if err != nil {
			return out, err
		}
		if o.Result.Outcome != messages.OutcomeSuccess {
			break
		}
	}
	return out, nil
}

// Capture loads an image on a slot and captures it as a new image.
func (r *Runner) Capture(ctx context.Context, slot *devlab.Slot, img devlab.ImageSpec) ([]Outcome, error) {
	res := r.NextReservation()
	target := &messages.TargetImage{ImageID: 900 + res%100, Name: fmt.Sprintf("vmwarelinux-demo%d-v1", res%100000), RevisionID: 9000 + res%1000, Revision: 1}
	var out []Outcome
	for _, spec := range []devlab.RequestSpec{{Kind: messages.KindNew}, {Kind: messages.KindImage, Target: target}} {
		spec.Slot, spec.Image, spec.Reservation, spec.Request = slot, img, res, res
		o, err := r.Do(ctx, r.Lab.Request(spec))
		out = append(out, o)
		if err != nil || o.Result.Outcome != messages.OutcomeSuccess {
			return out, err
		}
	}
	return out, nil
}

// Summarize counts outcomes.
func Summarize(outcomes []Outcome, took time.Duration) Summary {
	s := Summary{Requests: len(outcomes), Seconds: took.Seconds(), Outcomes: outcomes}
	for _, o := range outcomes {
		if o.Result != nil && o.Result.Outcome == messages.OutcomeSuccess {
			s.Succeeded++
		} else {
			s.Failed++
		}
	}
	sort.Slice(s.Outcomes, func(i, j int) bool { return s.Outcomes[i].Seq < s.Outcomes[j].Seq })
	return s
}

// Parallel runs fn for each slot index at once and gathers the outcomes.
func Parallel(n int, fn func(i int) ([]Outcome, error)) ([]Outcome, error) {
	var (
		mu   sync.Mutex
		all  []Outcome
		errs []error
		wg   sync.WaitGroup
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o, err := fn(i)
			mu.Lock()
			all = append(all, o...)
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return all, errs[0]
	}
	return all, nil
}
