package messages_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vclq/vclq/messages"
)

// TestDocsInSync checks that docs/messages.md shows every example payload as it is
// and mentions every schema, kind, subject name and field of the examples.
func TestDocsInSync(t *testing.T) {
	doc, err := os.ReadFile("../docs/messages.md")
	if err != nil {
		t.Skipf("docs/messages.md not found: %v", err)
	}
	d := string(doc)
	files, _ := filepath.Glob("testdata/*.json")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(d, string(data)) {
			t.Errorf("docs/messages.md does not show %s as it is", f)
		}
	}
	for _, n := range messages.SchemaNames() {
		if !strings.Contains(d, n) {
			t.Errorf("docs/messages.md does not mention schema %s", n)
		}
	}
	for _, s := range append(messages.RequestSubjects(),
		messages.StreamRequests, messages.StreamEvents, messages.StreamDeadLetters, messages.StreamAdvisories,
		messages.ConsumerWorkers, messages.ConsumerDeadLetterSweeper, messages.ConsumerBridge,
		messages.BucketSlotLeases, messages.BucketWorkers, messages.HeaderMsgID, messages.HeaderReservation,
		messages.HeaderRequest, messages.HeaderKind, messages.HeaderState, messages.HeaderWorker,
		messages.HeaderReason, messages.HeaderOrigSubject, messages.HeaderOrigSequence,
		messages.HeaderDeliveries, messages.HeaderDeadLetterAt, messages.SubjectControlCancelPrefix[:len(messages.SubjectControlCancelPrefix)-1]+".<reservation_id>") {
		if !strings.Contains(d, "`"+s+"`") {
			t.Errorf("docs/messages.md does not mention %s", s)
		}
	}
}
