package natsconn

import "testing"

func TestRedactHidesPasswords(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                   "nats://127.0.0.1:4222",
		"nats://u:secret@127.0.0.1:4222":          "nats://u:xxxxx@127.0.0.1:4222",
		"nats://a:s1@h1:4222,nats://b:s2@h2:4222": "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}
