package esxsim_test

import (
	"context"
	"net/url"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/vclq/vclq/internal/esxsim"
)

// workerClient logs in as the worker (the login fault rules apply to).
func workerClient(ctx context.Context, t *testing.T, h *esxsim.Host) *govmomi.Client {
	t.Helper()
	sc := soap.NewClient(h.URL, false)
	sc.SetThumbprint(h.URL.Host, h.Thumbprint)
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	sm := session.NewManager(vc)
	if err := sm.Login(ctx, url.UserPassword(h.Username, h.Password)); err != nil {
		t.Fatal(err)
	}
	return &govmomi.Client{Client: vc, SessionManager: sm}
}
