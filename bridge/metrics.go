package bridge

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/vclq/vclq/health"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/metrics"
)

// metrics is the bridge's metrics (nil: none; every method is nil-safe).
func (b *Bridge) metrics() *metrics.Bridge { return b.cfg.Metrics }

// noteError counts a database error by class; other errors (NATS) are not counted.
func (b *Bridge) noteError(err error) {
	if class, ok := dbErrorClass(err); ok {
		b.metrics().DatabaseError(class)
	}
}

// dbErrorClass classifies a database error: permanent when a retry cannot fix it
// (permanentDBError), transient for other server errors and lost connections.
func dbErrorClass(err error) (string, bool) {
	var me *mysql.MySQLError
	var ne net.Error
	switch {
	case err == nil:
		return "", false
	case errors.As(err, &me):
		if permanentDBError(err) {
			return metrics.DBPermanent, true
		}
		return metrics.DBTransient, true
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, mysql.ErrInvalidConn), errors.Is(err, sql.ErrConnDone), errors.As(err, &ne):
		return metrics.DBTransient, true
	}
	return "", false
}

// observeApplied counts a committed event with its lag since it was stored.
func (b *Bridge) observeApplied(e *event) {
	m := b.metrics()
	if m == nil {
		return
	}
	var stored time.Time
	if meta, err := e.msg.Metadata(); err == nil {
		stored = meta.Timestamp
	}
	m.Applied(eventType(e), stored)
}

func eventType(e *event) string {
	if e.result != nil {
		return metrics.EventResult
	}
	return metrics.EventLoadlog
}

// HealthChecks are the bridge's readiness checks: NATS connected, its event
// consumer bound, the database reachable (a ping, bounded by the check's context).
// The configuration and schema were checked by New.
func (b *Bridge) HealthChecks() []health.Check {
	return []health.Check{
		{Name: "nats", Fn: func(context.Context) error {
			nc := b.js.Conn()
			if nc == nil || !nc.IsConnected() {
				status := "no connection"
				if nc != nil {
					status = nc.Status().String()
				}
				return fmt.Errorf("not connected (%s)", status)
			}
			return nil
		}},
		{Name: "consumer", Fn: func(ctx context.Context) error {
			if _, err := b.js.Consumer(ctx, messages.StreamEvents, messages.ConsumerBridge); err != nil {
				return fmt.Errorf("consumer %s on %s: %w", messages.ConsumerBridge, messages.StreamEvents, err)
			}
			return nil
		}},
		{Name: "database", Fn: func(ctx context.Context) error {
			if err := b.db.PingContext(ctx); err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			return nil
		}},
	}
}
