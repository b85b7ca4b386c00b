// Package metrics declares vclq's Prometheus metrics and serves them.
//
// Each process makes its own registry (NewRegistry: no global default registry),
// builds the component's collectors on it (NewWorker, NewBridge) and hands the
// returned *Worker or *Bridge to the component through its Config. Every method is
// safe on a nil receiver, so a component without metrics needs no checks.
//
// Label values are bounded: request kinds, outcomes, loadlog step names (anything
// that is not a VCL computerloadstate name becomes "other"), event types, error
// classes and the configured ESX host names. No reservation, request or computer id
// is ever a label.
//
// Serve runs the HTTP listener of /metrics, /healthz and /readyz (package health).
package metrics
