package dlq_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vclq/vclq/dlq"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

func deadLetter(t *testing.T, js jetstream.JetStream, payload []byte, reason string, origSeq string) uint64 {
	t.Helper()
	m := nats.NewMsg(messages.DeadLetterSubject(messages.KindNew, 7001))
	m.Data = payload
	m.Header.Set(messages.HeaderReason, reason)
	m.Header.Set(messages.HeaderOrigSubject, "vcl.new")
	m.Header.Set(messages.HeaderOrigSequence, origSeq)
	m.Header.Set(messages.HeaderDeliveries, "5")
	m.Header.Set(messages.HeaderMsgID, "dlq-"+origSeq)
	ack, err := js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

func TestListShowReplay(t *testing.T) {
	j := testutil.StartVCLJetStream(t, streams.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	payload, err := os.ReadFile("../messages/testdata/new.json")
	if err != nil {
		t.Fatal(err)
	}
	s1 := deadLetter(t, j.JS, payload, "handler failed 5 times: boom", "11")
	s2 := deadLetter(t, j.JS, []byte("{not json"), "invalid message: not a JSON object", "12")

	st, err := dlq.Open(ctx, j.JS)
	if err != nil {
		t.Fatal(err)
	}
	list, err := st.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Seq != s1 || list[1].Seq != s2 {
		t.Fatalf("list = %+v", list)
	}
	if list[0].Reason != "handler failed 5 times: boom" || list[0].OriginalSeq != 11 || list[0].Deliveries != 5 || list[0].Reservation != 7001 || list[0].Payload != nil {
		t.Fatalf("entry = %+v", list[0])
	}
	e, err := st.Show(ctx, s2)
	if err != nil || string(e.Payload) != "{not json" {
		t.Fatalf("show = %+v, %v", e, err)
	}
	if _, err := st.Show(ctx, 999); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("show missing = %v, want ErrNotFound", err)
	}

	// Replay puts the request back on its subject and removes the dead letter.
	seq, err := st.Replay(ctx, s1)
	if err != nil {
		t.Fatal(err)
	}
	req, err := j.JS.Stream(ctx, messages.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	m, err := req.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "vcl.new" || string(m.Data) != string(payload) {
		t.Fatalf("replayed %s %q", m.Subject, m.Data)
	}
	if list, _ := st.List(ctx, 0); len(list) != 1 || list[0].Seq != s2 {
		t.Fatalf("after replay list = %+v", list)
	}
	if _, err := st.Replay(ctx, s1); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("second replay = %v, want ErrNotFound", err)
	}
}
