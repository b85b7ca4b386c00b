package bridge

import (
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/vclq/vclq/metrics"
)

// Config of a bridge. The zero value of every field but ManagementNodes is usable.
type Config struct {
	// ManagementNodes are the managementnode ids whose reservations this bridge
	// processes (reservation.managementnodeid) and whose lastcheckin it keeps current.
	// Required.
	ManagementNodes []int64
	// Interval between polls of the request table. default: 12s (vcld's check-in
	// interval).
	Interval time.Duration
	// Preload is how far ahead of its start a new or reload request is published.
	// default: 35m (the upper end of vcld's preload window; see Due).
	Preload time.Duration
	// PollLimit bounds the rows read per poll. default: 500.
	PollLimit int
	// FetchWait is how long a fetch waits for events. default: 1s.
	FetchWait time.Duration
	// EventAckWait is the AckWait of the bridge's event consumer: how long an event a
	// crashed bridge had fetched waits before it is redelivered. default: 30s.
	EventAckWait time.Duration
	// MaxBackoff caps the delay between retries after a database or NATS failure.
	// default: 30s (polls retry at most every Interval).
	MaxBackoff time.Duration
	// PublishTimeout bounds one publish. default: 10s.
	PublishTimeout time.Duration
	// SealKey opens sealed passwords for reservation.pw. Without it a result's
	// passwords are not stored and a WARNING loadlog row says so.
	SealKey *SealKey
	// Metrics receives the bridge's metrics (package metrics). default: nil, none.
	Metrics *metrics.Bridge
}

// Defaults.
const (
	DefaultInterval  = 12 * time.Second
	DefaultPreload   = 35 * time.Minute
	DefaultPollLimit = 500
)

func (c Config) withDefaults() (Config, error) {
	if len(c.ManagementNodes) == 0 {
		return c, fmt.Errorf("%w: at least one management node id is required", ErrConfig)
	}
	for _, id := range c.ManagementNodes {
		if id <= 0 {
			return c, fmt.Errorf("%w: management node id %d is not positive", ErrConfig, id)
		}
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Preload <= 0 {
		c.Preload = DefaultPreload
	}
	if c.PollLimit <= 0 {
		c.PollLimit = DefaultPollLimit
	}
	if c.FetchWait <= 0 {
		c.FetchWait = time.Second
	}
	if c.EventAckWait <= 0 {
		c.EventAckWait = 30 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 10 * time.Second
	}
	return c, nil
}

// DSN normalises a go-sql-driver/mysql DSN for the bridge: parseTime on, times in UTC
// on the Go side (the bridge converts with UNIX_TIMESTAMP/FROM_UNIXTIME and NOW() in
// SQL, so the site's time_zone is honoured whatever it is), a connect timeout.
func DSN(dsn string) (string, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "", fmt.Errorf("%w: mysql DSN: %w", ErrConfig, err)
	}
	cfg.ParseTime = true
	cfg.Loc = time.UTC
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.ReadTimeout == 0 {
		cfg.ReadTimeout = 30 * time.Second
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	return cfg.FormatDSN(), nil
}

// RedactDSN hides the password of a DSN for logs.
func RedactDSN(dsn string) string {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	if cfg.Passwd != "" {
		cfg.Passwd = "xxxxx"
	}
	return cfg.FormatDSN()
}
