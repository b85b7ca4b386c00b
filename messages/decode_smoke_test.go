package messages_test

import (
	"os"
	"testing"

	"github.com/vclq/vclq/messages"
)

func TestDecodeExampleNew(t *testing.T) {
	data, err := os.ReadFile("testdata/new.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := messages.DecodeRequest(data)
	if err != nil {
		t.Fatalf("example new.json: %v", err)
	}
	if r.Kind != messages.KindNew || r.Computer.ShortName != "vm-031" {
		t.Fatalf("decoded %+v", r)
	}
}
