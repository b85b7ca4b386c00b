package hypervisor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Error kinds. Every error a method returns for a failed host call is an *OpError that
// wraps exactly one of these (test with errors.Is), plus the underlying fault.
var (
	// ErrNotFound: the VM, file, datastore, network or image does not exist.
	ErrNotFound = errors.New("not found")
	// ErrPermission: the host refused the call for the configured user.
	ErrPermission = errors.New("permission denied")
	// ErrAuth: the host refused the login (wrong user or password).
	ErrAuth = errors.New("login refused")
	// ErrInsufficientResources: not enough datastore space, memory or CPU on the host.
	ErrInsufficientResources = errors.New("insufficient resources")
	// ErrTransient: a fault worth retrying (network failure, timeout, task in
	// progress, HTTP 502/503) that persisted through every attempt.
	ErrTransient = errors.New("transient failure")
	// ErrExists: the file or VM to create already exists.
	ErrExists = errors.New("already exists")
	// ErrImageExists: a capture's target image already exists.
	ErrImageExists = errors.New("image already exists")
	// ErrThumbprint: the host's TLS certificate did not match the pinned thumbprint
	// (or, without a thumbprint, could not be verified).
	ErrThumbprint = errors.New("TLS certificate not trusted")
	// ErrInvalid: an argument failed validation, before anything was done.
	ErrInvalid = errors.New("invalid argument")
	// ErrInvalidState: the VM is in the wrong power state for the call.
	ErrInvalidState = errors.New("invalid state")
	// ErrUnsupported: the host does not implement the call.
	ErrUnsupported = errors.New("not supported")
	// ErrConflict: the slot holds something the call cannot decide about, e.g.
	// several registered VMs or a VM with other metadata under the target name.
	ErrConflict = errors.New("conflict")
	// ErrFault: any other vSphere fault; permanent.
	ErrFault = errors.New("host fault")
)

// httpStatusRe matches govmomi's error for an HTTP answer that is not SOAP ("503 Service Unavailable").
var httpStatusRe = regexp.MustCompile(`^([1-5][0-9]{2}) `)

// errNotAuthenticated marks a lost session: log in again and repeat the call.
var errNotAuthenticated = errors.New("session not authenticated")

// OpError is a failed host call: which host, which slot (VM computer short name,
// may be empty), which call, after how many attempts, of which kind.
type OpError struct {
	Host     string
	Slot     string
	Op       string
	Attempts int
	Kind     error // one of the Err* values
	Err      error // the underlying fault or error
}

func (e *OpError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "host %s", e.Host)
	if e.Slot != "" {
		fmt.Fprintf(&b, " slot %s", e.Slot)
	}
	fmt.Fprintf(&b, ": %s: %v", e.Op, e.Kind)
	if e.Err != nil && e.Err != e.Kind {
		fmt.Fprintf(&b, ": %s", faultText(e.Err))
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	return b.String()
}

// Unwrap returns the kind and the underlying error.
func (e *OpError) Unwrap() []error { return []error{e.Kind, e.Err} }

// methodFault extracts the vSphere fault from a SOAP or task error.
func methodFault(err error) types.BaseMethodFault {
	var oe *OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return methodFault(oe.Err)
	}
	var te task.Error
	if errors.As(err, &te) && te.LocalizedMethodFault != nil {
		return te.Fault()
	}
	var pte *task.Error
	if errors.As(err, &pte) && pte != nil && pte.LocalizedMethodFault != nil {
		return pte.Fault()
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if soap.IsSoapFault(e) {
			return asMethodFault(soap.ToSoapFault(e).VimFault())
		}
		if soap.IsVimFault(e) {
			return asMethodFault(soap.ToVimFault(e))
		}
	}
	return nil
}

// asMethodFault accepts a fault decoded by value (e.g. types.Timedout) or by pointer.
func asMethodFault(v any) types.BaseMethodFault {
	if f, ok := v.(types.BaseMethodFault); ok {
		return f
	}
	if v == nil {
		return nil
	}
	rv := reflect.ValueOf(v)
	p := reflect.New(rv.Type())
	p.Elem().Set(rv)
	if f, ok := p.Interface().(types.BaseMethodFault); ok {
		return f
	}
	return nil
}

// faultText is a readable description of err: the fault type and its message.
func faultText(err error) string {
	f := methodFault(err)
	if f == nil {
		return err.Error()
	}
	name := strings.TrimPrefix(fmt.Sprintf("%T", f), "*types.")
	msg := strings.TrimPrefix(strings.TrimPrefix(err.Error(), "ServerFaultCode"), ": ")
	if fm := f.GetMethodFault(); fm != nil && fm.FaultCause != nil && fm.FaultCause.LocalizedMessage != "" && msg == "" {
		msg = fm.FaultCause.LocalizedMessage
	}
	if ff, ok := f.(types.BaseFileFault); ok && ff.GetFileFault().File != "" {
		name += " " + ff.GetFileFault().File
	}
	if msg == "" || strings.Contains(msg, name) {
		return name
	}
	return name + ": " + msg
}

// classify maps an error of a host call to its kind. It is the only place that knows
// vSphere fault types.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var oe *OpError
	if errors.As(err, &oe) {
		return oe.Kind
	}
	if errors.Is(err, ErrThumbprint) {
		return ErrThumbprint
	}
	var nf *find.NotFoundError
	if errors.As(err, &nf) {
		return ErrNotFound
	}
	if f := methodFault(err); f != nil {
		return classifyFault(f)
	}
	if soap.IsCertificateUntrusted(err) {
		return ErrThumbprint
	}
	var ce *x509.CertificateInvalidError
	if errors.As(err, &ce) {
		return ErrThumbprint
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return ErrTransient // a per-call timeout; the caller checks its own context first
	}
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		if m := httpStatusRe.FindStringSubmatch(ue.Err.Error()); m != nil {
			switch m[1] {
			case "429", "502", "503", "504":
				return ErrTransient
			}
			return ErrFault
		}
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return ErrTransient
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) {
		return ErrTransient
	}
	return ErrFault
}

func classifyFault(f types.BaseMethodFault) error {
	switch f.(type) {
	case *types.NotAuthenticated:
		return errNotAuthenticated
	case *types.InvalidLogin:
		return ErrAuth
	case *types.TaskInProgress, *types.Timedout, *types.RequestCanceled:
		return ErrTransient
	case *types.ManagedObjectNotFound, *types.NotFound, *types.InvalidDatastore, *types.FileNotFound:
		return ErrNotFound
	case *types.FileAlreadyExists, *types.DuplicateName, *types.AlreadyExists:
		return ErrExists
	case *types.NotSupported, *types.MethodNotFound, *types.MethodDisabled:
		return ErrUnsupported
	case *types.InvalidPowerState, *types.InvalidState:
		return ErrInvalidState
	case *types.NoDiskSpace:
		return ErrInsufficientResources
	}
	if _, ok := f.(types.BaseHostCommunication); ok {
		return ErrTransient
	}
	if _, ok := f.(types.BaseNoPermission); ok {
		return ErrPermission
	}
	if _, ok := f.(types.BaseInsufficientResourcesFault); ok {
		return ErrInsufficientResources
	}
	if _, ok := f.(types.BaseInvalidArgument); ok {
		return ErrInvalid
	}
	return ErrFault
}
