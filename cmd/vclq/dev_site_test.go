package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/soap"

	"github.com/vclq/vclq/bridge"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/messages"
)

// `vclq dev --workers 0 --no-demo --site-file F` is a site to attach to: F describes
// every host (reachable at its URL, pinned to its thumbprint, with its datastores and
// port groups), image and slot, the management key and the NATS URL; and no worker
// has registered.
func TestDevSiteFileWithoutWorkers(t *testing.T) {
	dir := t.TempDir()
	siteFile := filepath.Join(dir, "site.json")
	sealKey := writeSealPub(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"dev", "--workers", "0", "--no-demo", "--site-file", siteFile, "--seal-key", sealKey,
			"--guests", "none", "--hosts", "2", "--slots", "2", "--dir", filepath.Join(dir, "state")}, strings.NewReader(""), &out, &errb)
	}()
	err := wait.Until(ctx, time.Minute, 100*time.Millisecond, func(context.Context) (bool, error) {
		select {
		case code := <-done:
			return false, wait.Permanent(fmt.Errorf("dev exited %d", code))
		default:
		}
		_, err := os.Stat(siteFile)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("no site file: %v\n%s\n%s", err, out.String(), errb.String())
	}
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("dev did not stop within 30s of its context ending")
		}
	}()
	b, err := os.ReadFile(siteFile)
	if err != nil {
		t.Fatal(err)
	}
	var site devlab.SiteFile
	if err := json.Unmarshal(b, &site); err != nil {
		t.Fatalf("site file: %v\n%s", err, b)
	}
	t.Logf("site file:\n%s", b)
	checkSiteFields(t, site, sealKey)
	for _, h := range site.Hosts {
		checkSiteHost(ctx, t, h)
	}
	checkNoWorkers(ctx, t, site.NATSURL)
}

func writeSealPub(t *testing.T, dir string) string {
	t.Helper()
	k, err := bridge.NewSealKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "seal.pub")
	if err := os.WriteFile(p, []byte(k.PublicKeyBase64()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func checkSiteFields(t *testing.T, s devlab.SiteFile, sealKey string) {
	t.Helper()
	if !strings.HasPrefix(s.NATSURL, "nats://127.0.0.1:") || s.Guests != "simulated" || s.Workers != 0 || s.SealKeyFile != sealKey || s.ManagementIP == "" {
		t.Errorf("site: nats %q guests %q workers %d seal key %q management ip %q", s.NATSURL, s.Guests, s.Workers, s.SealKeyFile, s.ManagementIP)
	}
	for _, f := range []string{s.ManagementKeyFile, s.KnownHostsFile} {
		if !filepath.IsAbs(f) {
			t.Errorf("key path %q is not absolute", f)
		}
	}
	if _, err := os.Stat(s.ManagementKeyFile); err != nil {
		t.Errorf("management key: %v", err)
	}
	if len(s.Hosts) != 2 || len(s.Slots) != 4 || len(s.Images) == 0 {
		t.Fatalf("%d hosts, %d slots, %d images; want 2, 4, some", len(s.Hosts), len(s.Slots), len(s.Images))
	}
	hosts := map[int64]string{}
	for _, h := range s.Hosts {
		if h.VMHostID == 0 || h.Name == "" || h.Username == "" || h.Password == "" || h.Thumbprint == "" || h.ThumbprintSHA1 == "" ||
			len(h.Datastores) == 0 || !slices.Contains(h.PortGroups, "virtualswitch0") || !slices.Contains(h.PortGroups, "virtualswitch1") {
			t.Errorf("host %+v", h)
		}
		hosts[h.VMHostID] = h.Name
	}
	for _, im := range s.Images {
		if im.ID == 0 || im.Name == "" || im.RevisionID == 0 || im.Revision == 0 || im.OSType == "" {
			t.Errorf("image %+v", im)
		}
	}
	ids, ips := map[int64]bool{}, map[string]bool{}
	for _, sl := range s.Slots {
		if sl.ComputerID == 0 || sl.ShortName == "" || !strings.HasPrefix(sl.Hostname, sl.ShortName+".") || sl.PrivateIP == "" || sl.Eth0MAC == "" || sl.Eth1MAC == "" {
			t.Errorf("slot %+v", sl)
		}
		if hosts[sl.VMHostID] != sl.Host {
			t.Errorf("slot %s on vmhost %d %q; the hosts are %v", sl.ShortName, sl.VMHostID, sl.Host, hosts)
		}
		if ids[sl.ComputerID] || ips[sl.PrivateIP] {
			t.Errorf("slot %s: computer id %d or IP %s used twice", sl.ShortName, sl.ComputerID, sl.PrivateIP)
		}
		ids[sl.ComputerID], ips[sl.PrivateIP] = true, true
	}
}

// checkSiteHost logs in to a host as the site file says, pinned to its thumbprint,
// and finds each datastore and port group there.
func checkSiteHost(ctx context.Context, t *testing.T, h devlab.SiteHost) {
	t.Helper()
	u, err := url.Parse(h.URL)
	if err != nil {
		t.Fatal(err)
	}
	sc := soap.NewClient(u, false)
	sc.SetThumbprint(u.Host, h.Thumbprint)
	c, err := vim25.NewClient(ctx, sc)
	if err != nil {
		t.Fatalf("host %s: %v", h.Name, err)
	}
	if err := session.NewManager(c).Login(ctx, url.UserPassword(h.Username, h.Password)); err != nil {
		t.Fatalf("host %s: login: %v", h.Name, err)
	}
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatalf("host %s: %v", h.Name, err)
	}
	f.SetDatacenter(dc)
	for _, ds := range h.Datastores {
		if _, err := f.Datastore(ctx, ds.Name); err != nil || ds.URL == "" || ds.UUID == "" {
			t.Errorf("host %s: datastore %+v: %v", h.Name, ds, err)
		}
	}
	for _, pg := range h.PortGroups {
		if _, err := f.Network(ctx, pg); err != nil {
			t.Errorf("host %s: port group %s: %v", h.Name, pg, err)
		}
	}
	// A wrong pin is refused: the thumbprint is the host's.
	bad := soap.NewClient(u, false)
	bad.SetThumbprint(u.Host, strings.Repeat("00:", 31)+"00")
	if _, err := vim25.NewClient(ctx, bad); err == nil {
		t.Errorf("host %s: a wrong thumbprint was accepted", h.Name)
	}
}

func checkNoWorkers(ctx context.Context, t *testing.T, natsURL string) {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("connect to the site's NATS %s: %v", natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Stream(ctx, messages.StreamRequests); err != nil {
		t.Errorf("stream %s: %v", messages.StreamRequests, err)
	}
	kv, err := js.KeyValue(ctx, messages.BucketWorkers)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("workers registered with --workers 0: %v", keys)
	}
}

// The new flags refuse what they could not do.
func TestDevFlagCombinationsRefused(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--workers", "0"}, "--no-demo"},
		{[]string{"--workers", "-1", "--no-demo"}, "--workers -1"},
		{[]string{"--no-demo", "--requests", "3"}, "--requests"},
	} {
		code, _, errs := vclqRun(t, "", append([]string{"dev"}, tc.args...)...)
		if code != exitUsage || !strings.Contains(errs, tc.want) {
			t.Errorf("%v: exit %d, %q; want %d naming %s", tc.args, code, errs, exitUsage, tc.want)
		}
	}
}

// `--no-demo --once` exits at once, 0, after writing the site file; `--workers 2` runs
// two embedded workers that share the reservations.
func TestDevNoDemoOnceAndWorkers(t *testing.T) {
	siteFile := filepath.Join(t.TempDir(), "site.json")
	code, _, errs := vclqRun(t, "", "dev", "--no-demo", "--once", "--site-file", siteFile, "--guests", "none", "--hosts", "1", "--slots", "1")
	if code != exitOK {
		t.Fatalf("--no-demo --once: exit %d\n%s", code, errs)
	}
	var site devlab.SiteFile
	if b, err := os.ReadFile(siteFile); err != nil || json.Unmarshal(b, &site) != nil || site.Workers != 1 || len(site.Slots) != 1 {
		t.Fatalf("site file after --once: %v %+v", err, site)
	}
	code, out, errs := vclqRun(t, "", "dev", "--workers", "2", "--once", "--requests", "4", "--json", "--guests", "none", "--hosts", "1", "--slots", "2")
	if code != exitOK {
		t.Fatalf("--workers 2: exit %d\n%s\n%s", code, out, errs)
	}
}
