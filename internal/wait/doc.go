// Package wait is vclq's one bounded polling helper. Every wait in vclq (a VM powering
// on, a guest answering SSH, a task finishing) goes through Until, so that every wait
// has a timeout, a polling interval, an optional attempt limit, honours cancellation
// without sleeping out its interval, and fails with the same error shape: wrapping
// ErrTimeout (or the context's cause) and the last transient error, with the number of
// attempts and the elapsed time.
//
//	err := wait.Until(ctx, 10*time.Minute, 5*time.Second, func(ctx context.Context) (bool, error) {
//		return vm.PoweredOn(ctx)
//	})
//	if errors.Is(err, wait.ErrTimeout) { ... }
//
// A condition reports (true, nil) when done, (false, nil) or (false, err) to be polled
// again (err is remembered as the last transient error), and Permanent(err) to stop at
// once.
//
// Retry is the time-bounded retry of an operation (nil when done), usually paced with
// Backoff (doubling pauses, capped) and Jitter:
//
//	err := wait.Retry(ctx, time.Minute, 100*time.Millisecond, publishOnce,
//		wait.Backoff(2*time.Second), wait.Jitter(0.2))
package wait
