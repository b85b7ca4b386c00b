package bridgetest

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"

	"golang.org/x/crypto/nacl/box"

	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/worker"
)

// StateExit is a worker.Handler that does no real provisioning but ends every request
// the way VCL's state modules do (state_exit), emitting the loadlog steps of each flow:
//
//	new       load steps + addinguser, nodeready → reserved/reserved, image ids, passwords
//	reload    load steps, nodeready              → complete/available, image ids
//	reserved  reserved, postreserve, connected   → inuse/inuse, passwords
//	reclaim   timeout|deleted                    → complete/available if the user never
//	                                                connected (laststate reserved), else
//	                                                complete/reload
//	image     info (capture)                     → complete/reload, image size, new revision
//
// Fail, when set, makes the job fail permanently (failed/failed; image: maintenance).
type StateExit struct {
	// SealTo is the bridge's public key for the users' passwords (none when nil).
	SealTo *[32]byte
	// Step is the time each step takes. default: 0.
	Step time.Duration
	// Fail selects requests that fail.
	Fail func(*messages.Request) bool
}

var loadSteps = []string{
	messages.LoadStatusCheck, messages.LoadImageBlade, messages.LoadDoesImageExist, messages.LoadStartLoad,
	messages.LoadTransferVM, messages.LoadVMSetupConfig, messages.LoadStartVM, messages.LoadMachineBooted,
	messages.LoadImageComplete,
}

// Handle implements worker.Handler.
func (h *StateExit) Handle(ctx context.Context, job *worker.Job) (messages.Result, error) {
	r := job.Request
	var steps []string
	var res messages.Result
	switch r.Kind {
	case messages.KindNew:
		steps = append(append(steps, loadSteps...), messages.LoadAddingUser, messages.LoadNodeReady)
		res = messages.Result{RequestState: messages.StateReserved, ComputerState: messages.StateReserved,
			IP: r.Computer.PrivateIP, ImageID: r.Image.ID, ImageRevisionID: r.Image.RevisionID}
	case messages.KindReload:
		steps = append(append(steps, loadSteps...), messages.LoadNodeReady)
		res = messages.Result{RequestState: messages.StateComplete, ComputerState: messages.StateAvailable,
			IP: r.Computer.PrivateIP, ImageID: r.Image.ID, ImageRevisionID: r.Image.RevisionID}
	case messages.KindReserved:
		steps = []string{messages.LoadReserved, messages.LoadPostReserve, messages.LoadConnected}
		res = messages.Result{RequestState: messages.StateInUse, ComputerState: messages.StateInUse}
	case messages.KindReclaim:
		steps = []string{r.Request.State}
		res = messages.Result{RequestState: messages.StateComplete, ComputerState: messages.StateReload}
		if r.Request.LastState == messages.StateReserved {
			res.ComputerState = messages.StateAvailable
		}
	case messages.KindImage:
		steps = []string{messages.LoadInfo}
		t := r.TargetImage
		res = messages.Result{RequestState: messages.StateComplete, ComputerState: messages.StateReload,
			ImageSizeMB: 4096, NewImage: &messages.TargetImage{ImageID: t.ImageID, Name: t.Name, RevisionID: t.RevisionID, Revision: t.Revision}}
	}
	for i, name := range steps {
		start := time.Now()
		if err := job.Events.Loadlog(ctx, worker.StepEvent{Step: i + 1, Name: name, Phase: messages.PhaseBegin}); err != nil {
			return messages.Result{}, err
		}
		if h.Step > 0 {
			if err := wait.Sleep(ctx, h.Step); err != nil {
				return messages.Result{}, err
			}
		}
		if h.Fail != nil && h.Fail(r) && i == len(steps)/2 {
			_ = job.Events.Loadlog(ctx, worker.StepEvent{Step: i + 1, Name: name, Phase: messages.PhaseFail, Info: "simulated failure", Duration: time.Since(start)})
			st := messages.StateFailed
			if r.Kind == messages.KindImage {
				st = messages.StateMaintenance
			}
			return messages.Result{RequestState: st, ComputerState: st},
				worker.Permanent(&worker.CodedError{Code: "simulated", Err: fmt.Errorf("step %s failed on purpose", name)})
		}
		if err := job.Events.Loadlog(ctx, worker.StepEvent{Step: i + 1, Name: name, Phase: messages.PhaseEnd, Duration: time.Since(start)}); err != nil {
			return messages.Result{}, err
		}
	}
	if h.SealTo != nil && (r.Kind == messages.KindNew || r.Kind == messages.KindReserved) {
		for _, u := range r.Users {
			var raw [12]byte
			_, _ = rand.Read(raw[:])
			pw := base64.RawURLEncoding.EncodeToString(raw[:])
			sealed, err := box.SealAnonymous(nil, []byte(pw), h.SealTo, rand.Reader)
			if err != nil {
				return messages.Result{}, err
			}
			res.Passwords = append(res.Passwords, messages.SealedPassword{UserID: u.ID, Login: u.Login, Sealed: base64.StdEncoding.EncodeToString(sealed)})
		}
	}
	return res, nil
}
