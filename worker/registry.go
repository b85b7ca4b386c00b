package worker

import (
	"context"
	"encoding/json"
	"os"
	"sort"
	"time"
)

// Registration returns the worker's current registry entry.
func (p *Pool) Registration() Registration {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := Registration{
		ID: p.cfg.ID, Hostname: p.hostname, PID: os.Getpid(), Version: p.cfg.Version,
		Started: p.started, Heartbeat: time.Now().UTC(), Concurrency: p.cfg.Concurrency,
		Draining: p.draining, Active: make([]ActiveJob, 0, len(p.active)),
	}
	for j := range p.active {
		state, _ := j.state.Load().(string)
		r.Active = append(r.Active, ActiveJob{
			Reservation: j.req.Reservation.ID, Request: j.req.Request.ID, Computer: j.req.Computer.ID,
			Kind: j.req.Kind, Seq: j.seq, Delivery: j.delivery, State: state, Since: j.since,
		})
	}
	sort.Slice(r.Active, func(a, b int) bool { return r.Active[a].Seq < r.Active[b].Seq })
	return r
}

// heartbeat writes the registry entry every HeartbeatInterval until ctx ends.
func (p *Pool) heartbeat(ctx context.Context) {
	t := time.NewTicker(p.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		p.writeRegistration(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Pool) writeRegistration(ctx context.Context) {
	data, err := json.Marshal(p.Registration())
	if err != nil {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, p.cfg.HeartbeatInterval)
	defer cancel()
	if _, err := p.registry.Put(wctx, RegistryKey(p.cfg.ID), data); err != nil && ctx.Err() == nil {
		p.log.Warn().Err(err).Msg("registry heartbeat failed")
	}
}
