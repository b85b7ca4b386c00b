package messages_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vclq/vclq/messages"
)

func TestDecodeEventExamples(t *testing.T) {
	l, err := messages.DecodeLoadlog(readExample(t, "loadlog"))
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != messages.LoadTransferVM || l.Phase != messages.PhaseEnd || l.ReservationID != 7001 {
		t.Errorf("loadlog %+v", l)
	}
	for _, name := range []string{"result", "result_failed", "result_rejected"} {
		r, err := messages.DecodeResult(readExample(t, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "result_rejected" && (r.Outcome != messages.OutcomeRejected || r.ReservationID != 0) {
			t.Errorf("rejected %+v", r)
		}
	}
}

func TestDecodeLoadlogRejects(t *testing.T) {
	set := func(k string, v any) func(map[string]any) { return func(m map[string]any) { m[k] = v } }
	del := func(k string) func(map[string]any) { return func(m map[string]any) { delete(m, k) } }
	cases := map[string]func(map[string]any){
		"unknown field":         set("password", "x"),
		"case-folded key":       func(m map[string]any) { m["Name"] = m["name"]; delete(m, "name") },
		"schema 2":              set("schema", 2),
		"missing schema":        del("schema"),
		"missing reservation":   del("reservation_id"),
		"missing request_id":    del("request_id"),
		"missing kind":          del("kind"),
		"missing name":          del("name"),
		"missing phase":         del("phase"),
		"missing step":          del("step"),
		"missing time":          del("time"),
		"missing worker":        del("worker"),
		"missing request_seq":   del("request_seq"),
		"reservation 0":         set("reservation_id", 0),
		"reservation string":    set("reservation_id", "7001"),
		"negative request":      set("request_id", -1),
		"unknown loadstate":     set("name", "mystep"),
		"loadstate with shell":  set("name", "info;id"),
		"bad phase":             set("phase", "middle"),
		"bad kind":              set("kind", "x"),
		"step too big":          set("step", 1001),
		"negative duration":     set("duration_ms", -5),
		"info newline":          set("info", "a\nb"),
		"info escape sequence":  set("info", "\x1b[2J"),
		"info too long":         set("info", strings.Repeat("x", messages.MaxInfoLen+1)),
		"empty info":            set("info", ""),
		"worker with space":     set("worker", "mn 1"),
		"empty worker":          set("worker", ""),
		"zero time":             set("time", "0001-01-01T00:00:00Z"),
		"bad time":              set("time", "2026-11-24 10:02:41"),
		"null time":             set("time", nil),
		"negative request_seq":  set("request_seq", -1),
		"request_seq too large": set("request_seq", uint64(1)<<60),
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			m := exampleMap(t, "loadlog")
			mutate(m)
			l, err := messages.DecodeLoadlog(marshal(t, m))
			if err == nil || l != nil {
				t.Fatalf("accepted %v", m)
			}
			if !errors.Is(err, messages.ErrInvalid) {
				t.Errorf("not ErrInvalid: %v", err)
			}
		})
	}
}

func TestDecodeResultRejects(t *testing.T) {
	set := func(k string, v any) func(map[string]any) { return func(m map[string]any) { m[k] = v } }
	del := func(k string) func(map[string]any) { return func(m map[string]any) { delete(m, k) } }
	cases := []struct {
		name, base string
		mutate     func(map[string]any)
	}{
		{"unknown field", "result", set("password", "x")},
		{"clear password", "result", set("passwords", []any{map[string]any{"user_id": 900, "login": "alice", "password": "hunter2"}})},
		{"sealed not base64", "result", set("passwords", []any{map[string]any{"user_id": 900, "login": "alice", "sealed": "hunter2!"}})},
		{"sealed bad padding", "result", set("passwords", []any{map[string]any{"user_id": 900, "login": "alice", "sealed": "abc"}})},
		{"sealed too long", "result", set("passwords", []any{map[string]any{"user_id": 900, "login": "alice", "sealed": strings.Repeat("A", 1028)}})},
		{"password bad login", "result", set("passwords", []any{map[string]any{"user_id": 900, "login": "Alice", "sealed": "AAAA"}})},
		{"password missing user", "result", set("passwords", []any{map[string]any{"login": "alice", "sealed": "AAAA"}})},
		{"schema 2", "result", set("schema", 2)},
		{"missing outcome", "result", del("outcome")},
		{"missing request_state", "result", del("request_state")},
		{"missing computer_state", "result", del("computer_state")},
		{"missing kind", "result", del("kind")},
		{"missing worker", "result", del("worker")},
		{"missing time", "result", del("time")},
		{"missing deliveries", "result", del("deliveries")},
		{"missing request_seq", "result", del("request_seq")},
		{"bad outcome", "result", set("outcome", "ok")},
		{"success reservation 0", "result", set("reservation_id", 0)},
		{"success empty kind", "result", set("kind", "")},
		{"success empty state", "result", set("request_state", "")},
		{"bad state", "result", set("computer_state", "broken")},
		{"bad ip", "result", set("ip", "192.0.2.1%eth0")},
		{"negative image id", "result", set("image_id", -1)},
		{"negative size", "result", set("image_size_mb", -1)},
		{"new image bad name", "result", set("new_image", map[string]any{"image_id": 1, "name": "../x", "revision_id": 1, "revision": 1})},
		{"new image missing revision", "result", set("new_image", map[string]any{"image_id": 1, "name": "x", "revision_id": 1})},
		{"negative deliveries", "result", set("deliveries", -1)},
		{"bad worker", "result", set("worker", "mn1;id")},
		{"failed without error", "result_failed", del("error")},
		{"failed error newline", "result_failed", set("error", "a\nb")},
		{"failed bad error code", "result_failed", set("error_code", "E 1")},
		{"failed empty error code", "result_failed", set("error_code", "")},
		{"rejected bad kind", "result_rejected", set("kind", "x")},
		{"rejected bad state", "result_rejected", set("request_state", "x;y")},
		{"rejected negative reservation", "result_rejected", set("reservation_id", -1)},
		{"rejected without error", "result_rejected", del("error")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := exampleMap(t, c.base)
			c.mutate(m)
			r, err := messages.DecodeResult(marshal(t, m))
			if err == nil || r != nil {
				t.Fatalf("accepted %v", m)
			}
			if !errors.Is(err, messages.ErrInvalid) {
				t.Errorf("not ErrInvalid: %v", err)
			}
		})
	}
	// A rejected result may name the reservation and kind from a hint.
	m := exampleMap(t, "result_rejected")
	m["reservation_id"], m["kind"] = 7001, "new"
	if _, err := messages.DecodeResult(marshal(t, m)); err != nil {
		t.Errorf("rejected with hint: %v", err)
	}
}

func TestLoadlogMsgID(t *testing.T) {
	l, err := messages.DecodeLoadlog(readExample(t, "loadlog"))
	if err != nil {
		t.Fatal(err)
	}
	base := *l
	id := base.MsgID()
	if id != base.MsgID() {
		t.Fatal("not deterministic")
	}
	// Detail that differs between a publish and its retry does not change the id.
	retry := base
	retry.Time = retry.Time.Add(time.Second)
	retry.Worker = "mn2"
	retry.DurationMS++
	retry.Info = "other text"
	if retry.MsgID() != id {
		t.Errorf("retry changed the id: %s vs %s", retry.MsgID(), id)
	}
	seen := map[string]bool{id: true}
	for name, f := range map[string]func(*messages.Loadlog){
		"phase begin": func(x *messages.Loadlog) { x.Phase = messages.PhaseBegin },
		"phase fail":  func(x *messages.Loadlog) { x.Phase = messages.PhaseFail },
		"phase info":  func(x *messages.Loadlog) { x.Phase = messages.PhaseInfo },
		"step":        func(x *messages.Loadlog) { x.Step++ },
		"name":        func(x *messages.Loadlog) { x.Name = messages.LoadStartVM },
		"reservation": func(x *messages.Loadlog) { x.ReservationID++ },
		"request seq": func(x *messages.Loadlog) { x.RequestSeq++ },
		"info text":   func(x *messages.Loadlog) { x.Phase = messages.PhaseInfo; x.Info = "second info" },
	} {
		c := base
		f(&c)
		if seen[c.MsgID()] {
			t.Errorf("%s: id %s not distinct", name, c.MsgID())
		}
		seen[c.MsgID()] = true
	}
	// Two info events of one step differ by their text; the same text is one event.
	a, b := base, base
	a.Phase, b.Phase = messages.PhaseInfo, messages.PhaseInfo
	a.Info, b.Info = "x", "x"
	b.Time = b.Time.Add(time.Minute)
	if a.MsgID() != b.MsgID() {
		t.Error("same info, different ids")
	}
}

func TestResultMsgID(t *testing.T) {
	r, err := messages.DecodeResult(readExample(t, "result"))
	if err != nil {
		t.Fatal(err)
	}
	id := r.MsgID()
	if id != "result-7001-118" || id != r.MsgID() {
		t.Errorf("MsgID = %q", id)
	}
	c := *r
	c.Outcome, c.Time, c.Deliveries = messages.OutcomeFailed, c.Time.Add(time.Hour), 3
	if c.MsgID() != id {
		t.Error("one delivery outcome must have one id whatever its content")
	}
	c.RequestSeq++
	if c.MsgID() == id {
		t.Error("another request sequence must have another id")
	}
	c = *r
	c.ReservationID = 0
	if c.MsgID() == id {
		t.Error("reservation 0 must differ")
	}
}

func TestSubjects(t *testing.T) {
	if got := messages.LoadlogSubject(7001); got != "vcl.events.loadlog.7001" {
		t.Error(got)
	}
	if got := messages.ResultSubject(0); got != "vcl.events.result.0" {
		t.Error(got)
	}
	if got := messages.ReservationEventsSubject(7001); got != "vcl.events.*.7001" {
		t.Error(got)
	}
	if got := messages.DeadLetterSubject(messages.KindImage, 7); got != "vcl.dlq.image.7" {
		t.Error(got)
	}
	if got := messages.DeadLetterSubject("bogus;", 0); got != "vcl.dlq.unknown.0" {
		t.Error(got)
	}
	if got := messages.SlotLeaseKey(31); got != "computer.31" {
		t.Error(got)
	}
	want := []string{"vcl.new", "vcl.reload", "vcl.reclaim", "vcl.image", "vcl.reserved"}
	if got := strings.Join(messages.RequestSubjects(), " "); got != strings.Join(want, " ") {
		t.Error(got)
	}
	for _, s := range []string{"vcl.events.loadlog.1", "vcl.new.x", "vcl.", "new", "vcl.dlq.new.1", "xvcl.new"} {
		if _, ok := messages.KindFromSubject(s); ok {
			t.Errorf("KindFromSubject(%q) ok", s)
		}
	}
}

func TestLateTracker(t *testing.T) {
	ll := func(res int64, seq uint64) *messages.Loadlog {
		return &messages.Loadlog{ReservationID: res, RequestSeq: seq}
	}
	rs := func(res int64, seq uint64) *messages.Result {
		return &messages.Result{ReservationID: res, RequestSeq: seq}
	}
	var tr messages.LateTracker
	for i, c := range []struct {
		l    *messages.Loadlog
		r    *messages.Result
		late bool
	}{
		{l: ll(1, 10)},             // before any result
		{r: rs(1, 10)},             // the request's result
		{l: ll(1, 10), late: true}, // after its own result: a fenced-out job's
		{l: ll(1, 9), late: true},  // an older request of the reservation
		{l: ll(1, 11)},             // a newer request
		{l: ll(2, 10)},             // another reservation
		{r: rs(1, 8)},              // an older result does not lower the floor
		{l: ll(1, 10), late: true}, //
		{r: rs(1, 12)}, {l: ll(1, 11), late: true},
	} {
		if got := tr.Observe(c.l, c.r); got != c.late {
			t.Errorf("event %d: late %v, want %v", i, got, c.late)
		}
	}
}
