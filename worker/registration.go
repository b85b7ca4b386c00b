package worker

import (
	"strings"
	"time"

	"github.com/vclq/vclq/messages"
)

// Registration is a worker's entry in the vclq_workers KV bucket (JSON), written every
// Config.HeartbeatInterval and removed on a clean stop. The bucket's TTL drops the
// entry of a worker that stopped heartbeating. `vclq status` reads it.
type Registration struct {
	ID          string    `json:"id"`
	Hostname    string    `json:"hostname"`
	PID         int       `json:"pid"`
	Version     string    `json:"version"`
	Started     time.Time `json:"started"`
	Heartbeat   time.Time `json:"heartbeat"`
	Concurrency int       `json:"concurrency"`
	// Draining is true once the worker stopped pulling (shutdown).
	Draining bool        `json:"draining,omitempty"`
	Active   []ActiveJob `json:"active"`
}

// Job states in ActiveJob.State.
const (
	JobWaiting = "waiting" // waiting for its slot lease
	JobRunning = "running" // the handler runs
)

// ActiveJob is one job a worker holds.
type ActiveJob struct {
	Reservation int64         `json:"reservation"`
	Request     int64         `json:"request"`
	Computer    int64         `json:"computer"`
	Kind        messages.Kind `json:"kind"`
	Seq         uint64        `json:"seq"`
	Delivery    int           `json:"delivery"`
	State       string        `json:"state"`
	Since       time.Time     `json:"since"`
}

// RegistryKey is the vclq_workers key of a worker id: characters a KV key cannot hold
// (':' and '@' are allowed in worker ids) become '_'.
func RegistryKey(workerID string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.', r == '=':
			return r
		}
		return '_'
	}, workerID)
}
