// Package bench holds the measurement suites behind `make bench`. Each suite measures
// vclq beside a physical or raw anchor in the same run (the machine is shared and
// noisy, so only ratios within one run mean anything) and writes a Markdown section.
package bench
