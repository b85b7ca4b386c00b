package main

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/streams"
)

// convergeStreams is how a worker, a bridge and `vclq dev` ensure the JetStream
// assets at start: streams.Converge creates what is missing and changes nothing that
// exists; every difference it finds is logged as a warning. Only `vclq nats init`
// (streams.Apply) changes existing assets, replica counts included.
func convergeStreams(ctx context.Context, js jetstream.JetStream, o streams.Options, log zerolog.Logger) error {
	diffs, err := streams.Converge(ctx, js, o)
	logDifferences(log, diffs)
	return err
}

// logDifferences logs what Converge left as is.
func logDifferences(log zerolog.Logger, diffs []streams.Difference) {
	for _, d := range diffs {
		log.Warn().Str("asset", d.Asset).Str("field", d.Field).Str("found", d.Found).Str("expected", d.Expected).
			Msg("JetStream asset differs from this configuration; left as is (`vclq nats init` changes it)")
	}
}
