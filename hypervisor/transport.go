package hypervisor

import (
	"context"
	"errors"
	"reflect"

	"github.com/vmware/govmomi/vim25/soap"
)

// retryTransport retries each SOAP call on its own when it fails transiently, with
// exponential backoff and jitter, up to MaxAttempts. Retrying single calls (rather
// than whole sequences of calls) keeps a load going when a fraction of all calls
// fail. The error after the last attempt is marked so that the operation layer does
// not retry it once more.
type retryTransport struct {
	next soap.RoundTripper
	c    *ESX
}

// exhausted marks a transient error that was already retried MaxAttempts times.
type exhausted struct {
	err      error
	attempts int
}

func (e *exhausted) Error() string { return e.err.Error() }
func (e *exhausted) Unwrap() error { return e.err }

func (t *retryTransport) RoundTrip(ctx context.Context, req, res soap.HasFault) error {
	rv := reflect.ValueOf(res)
	for attempt := 1; ; attempt++ {
		// A fresh response body per attempt: a failed attempt leaves its fault in it.
		fresh := reflect.New(rv.Type().Elem())
		err := t.next.RoundTrip(ctx, req, fresh.Interface().(soap.HasFault))
		if err == nil || ctx.Err() != nil || classify(err) != ErrTransient {
			rv.Elem().Set(fresh.Elem())
			return err
		}
		if attempt >= t.c.cfg.MaxAttempts {
			rv.Elem().Set(fresh.Elem())
			return &exhausted{err: err, attempts: attempt}
		}
		t.c.log.Debug().Int("attempt", attempt).Err(err).Msg("transient fault on SOAP call; retrying")
		if sleep(ctx, t.c.backoff(attempt)) != nil {
			return err
		}
	}
}

// attemptsOf reports how often the transport tried the call that failed with err.
func attemptsOf(err error) (int, bool) {
	var ex *exhausted
	if errors.As(err, &ex) {
		return ex.attempts, true
	}
	return 0, false
}
