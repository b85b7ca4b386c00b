package flow

import "context"

// marker is a step that only records where the flow is (VCL writes these rows too:
// loadimageblade, nodeready, ...); detail, when set, becomes its end event's info.
type marker struct {
	name   string
	detail func(f *Flow) string
}

func (m marker) Name() string { return m.name }

func (m marker) Run(_ context.Context, f *Flow) error {
	if m.detail != nil {
		f.Detail("%s", m.detail(f))
	}
	return nil
}
