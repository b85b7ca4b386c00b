package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/messages"
)

// vclq submit <state> <file|->: validate a request, then publish it with a message id.
func runSubmit(ctx context.Context, e *env, args []string) int {
	var nc natsconn.Config
	var msgID string
	var asJSON bool
	fs := flagSet(e, "submit", "<new|reload|reclaim|image|reserved> <file|->")
	nc.RegisterFlags(fs)
	fs.StringVar(&msgID, "msg-id", "", "Nats-Msg-Id (default: from kind, reservation and request.modified, else a hash of the payload)")
	fs.BoolVar(&asJSON, "json", false, "print the result as JSON")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return exitUsage
	}
	kind := messages.Kind(fs.Arg(0))
	if !kind.Valid() {
		fmt.Fprintf(e.stderr, "vclq submit: %q is not a request kind (new, reload, reclaim, image, reserved)\n", kind)
		return exitUsage
	}
	var in io.Reader = e.stdin
	if fs.Arg(1) != "-" {
		f, err := os.Open(fs.Arg(1))
		if err != nil {
			return fail(e, "submit: %v", err)
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(io.LimitReader(in, messages.MaxMessageSize+1))
	if err != nil {
		return fail(e, "submit: read: %v", err)
	}
	req, err := messages.DecodeRequest(data)
	if err != nil {
		return fail(e, "submit: not published: %v", err)
	}
	if req.Kind != kind {
		return fail(e, "submit: not published: the message is a %q request, not %q", req.Kind, kind)
	}
	if msgID == "" {
		msgID = submitMsgID(req, data)
	}
	conn, js, ok := connect(e, nc)
	if !ok {
		return exitFailure
	}
	defer conn.Close()
	m := nats.NewMsg(kind.Subject())
	m.Data = data
	m.Header.Set(messages.HeaderMsgID, msgID)
	m.Header.Set(messages.HeaderKind, string(kind))
	m.Header.Set(messages.HeaderReservation, strconv.FormatInt(req.Reservation.ID, 10))
	m.Header.Set(messages.HeaderRequest, strconv.FormatInt(req.Request.ID, 10))
	cctx, cancel := commandContext(ctx, 10*time.Second)
	defer cancel()
	ack, err := js.PublishMsg(cctx, m)
	if err != nil {
		return fail(e, "submit: publish to %s: %v", m.Subject, err)
	}
	if asJSON {
		printJSON(e.stdout, map[string]any{"stream": ack.Stream, "seq": ack.Sequence, "duplicate": ack.Duplicate, "msg_id": msgID, "reservation": req.Reservation.ID})
		return exitOK
	}
	dup := ""
	if ack.Duplicate {
		dup = " (duplicate: already queued)"
	}
	fmt.Fprintf(e.stdout, "%s seq %d reservation %d msg-id %s%s\n", ack.Stream, ack.Sequence, req.Reservation.ID, msgID, dup)
	return exitOK
}

// submitMsgID is the request's own id when it carries request.modified, else a
// content hash, so submitting the same file twice queues it once.
func submitMsgID(r *messages.Request, data []byte) string {
	if !r.Request.Modified.IsZero() {
		return r.MsgID()
	}
	sum := sha256.Sum256(data)
	return fmt.Sprintf("%s-%d-sha256-%s", r.Kind, r.Reservation.ID, hex.EncodeToString(sum[:12]))
}
