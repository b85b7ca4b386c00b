package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/bridge"
	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/eventlog"
	"github.com/vclq/vclq/flow"
	"github.com/vclq/vclq/hypervisor"
	"github.com/vclq/vclq/internal/devlab"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/osconfig"
	"github.com/vclq/vclq/streams"
	"github.com/vclq/vclq/worker"
)

// The fixture site of TestBridgeSiteEndToEnd, in VCL's tables; the slots and images
// are the devlab's (computer ids 101.., images 12 and 15).
const (
	bsMN                       = 100
	bsProfile                  = 100
	bsAlice, bsBob             = 100, 101
	bsCarol, bsDave            = 102, 103
	bsCentos, bsCentosRev      = 12, 44
	bsUbuntu, bsUbuntuRev      = 15, 51
	bsCaptured, bsCapturedRev  = 16, 60 // the image the web UI creates for the capture
	bsCapturedName             = "vmwarelinux-centos7lab-v1"
	bsLoad                     = "statuscheck,loadimageblade,doesimageexists,startload,transfervm,vmsetupconfig,startvm,machinebooted,loadimagecomplete"
	bsReloadOnly               = "loadimageblade,doesimageexists,startload,transfervm,vmsetupconfig,startvm,machinebooted,loadimagecomplete"
	bsPhaseWait                = 90 * time.Second
	bsPoll                     = 100 * time.Millisecond
	bsHostComputer, bsVMHostID = 200, 1 // + host index
)

// TestBridgeSiteEndToEnd is issue 6's acceptance test with the real flows: a fixture
// VCL site (2 ESX hosts, 6 VM slots, 2 images, several users) matching a devlab, with
// requests in several states, is bridged end to end — MariaDB → bridge → NATS →
// worker pool running the real flows on vcsim hosts and namespace guests → events →
// bridge → MariaDB — and the database ends in the states VCL's web UI expects, with
// the computerloadlog rows its progress view reads, while the hosts and guests show
// the same story. It runs on vclq's own schema and on VCL's vcl.sql.
func TestBridgeSiteEndToEnd(t *testing.T) {
	requireGuests(t)
	if err := bt.Reachable(context.Background()); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB at %s is unreachable and CI is set: %v", bt.Addr(), err)
		}
		t.Skipf("MariaDB at %s is unreachable: %v", bt.Addr(), err)
	}
	for _, schema := range []string{bt.SchemaOwn, bt.SchemaUpstream} {
		t.Run(schema, func(t *testing.T) { bridgeSiteEndToEnd(t, schema) })
	}
}

// bsite is a devlab, a VCL database whose rows describe it, NATS, workers with the
// real flows, and a bridge.
type bsite struct {
	t   *testing.T
	lab *devlab.Lab
	js  *testutil.JetStream
	db  *sql.DB
	// bridgeDB logs in as a user holding exactly the grants docs/bridge.md lists.
	bridgeDB *sql.DB
	key      *bridge.SealKey
	log      zerolog.Logger
}

// bsRow is one request of the fixture and what VCL's web UI must show for it.
type bsRow struct {
	name                 string
	req                  bt.Req
	request, reservation int64
}

func bridgeSiteEndToEnd(t *testing.T, schema string) {
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()

	lab, err := devlab.Start(ctx, devlab.Config{Hosts: 2, SlotsPerHost: 3, Guests: "namespace", Dir: t.TempDir(), Logger: &log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	if len(lab.Slots) != 6 || len(lab.Images) != 2 {
		t.Fatalf("devlab: %d slots, %d images", len(lab.Slots), len(lab.Images))
	}
	s := &bsite{t: t, lab: lab, log: log}
	s.db = s.freshDB(ctx, schema)

	// The site's users; alice has an SSH key, whose private half the test keeps.
	aliceKey, alicePub := userKey(t, t.TempDir())
	spec := s.siteSpec([]bt.UserSpec{
		{ID: bsAlice, Login: "alice", UID: 20001, SSHKeys: []string{alicePub}},
		{ID: bsBob, Login: "bob", UID: 20002},
		{ID: bsCarol, Login: "carol", UID: 20003},
		{ID: bsDave, Login: "dave"},
	})
	if err := bt.LoadSiteSpec(ctx, s.db, spec); err != nil {
		t.Fatal(err)
	}
	slot := func(i int) int64 { return lab.Slots[i].Computer.ID }

	// Requests in several states, as VCL's web UI leaves them.
	A := &bsRow{name: "A new → Connect → inuse → end passes (timeout)", req: bt.Req{State: "new", Computer: slot(0), Rev: bsCentosRev, User: bsAlice, Accounts: []int64{bsBob}}}
	B := &bsRow{name: "B new → deleted by its user", req: bt.Req{State: "new", Computer: slot(1), Rev: bsUbuntuRev, User: bsBob}}
	C := &bsRow{name: "C reload", req: bt.Req{State: "reload", Computer: slot(2), Rev: bsUbuntuRev, User: bt.UserReload}}
	D := &bsRow{name: "D new → Connect → image capture", req: bt.Req{State: "new", Computer: slot(3), Rev: bsCentosRev, User: bsCarol, Start: 10 * time.Minute}}
	E := &bsRow{name: "E new", req: bt.Req{State: "new", Computer: slot(4), Rev: bsUbuntuRev, User: bsDave}}
	F := &bsRow{name: "F timeout (never acknowledged, VM gone; next image set)", req: bt.Req{State: "timeout", Last: "reserved", Computer: slot(5), Rev: bsCentosRev, User: bsBob, Start: -2 * time.Hour}}
	G := &bsRow{name: "G new, not due for 3 h", req: bt.Req{State: "new", Computer: slot(5), Rev: bsCentosRev, User: bsAlice, Start: 3 * time.Hour}}
	rows := []*bsRow{A, B, C, D, E, F, G}
	for _, r := range rows {
		if r.request, r.reservation, err = bt.AddRequest(ctx, s.db, r.req); err != nil {
			t.Fatal(err)
		}
	}
	// F's reservation held its computer (reserved) until it timed out.
	s.exec("UPDATE computer SET stateid = ? WHERE id = ?", messages.StateIDs[messages.StateReserved], slot(5))

	s.key, err = bridge.NewSealKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := flow.ParseSealer(s.key.PublicKeyBase64())
	if err != nil {
		t.Fatal(err)
	}
	s.js = testutil.StartVCLJetStream(t, streams.Options{AckWait: 15 * time.Second, MaxDeliver: 5})
	s.startWorkers(sealer)
	s.startBridge()
	t.Logf("%s: site up in %s", schema, time.Since(began).Round(time.Millisecond))

	// Phase 1: the due rows are claimed and run; G is left alone.
	s.waitStates("phase 1", map[*bsRow]string{
		A: "reserved/new", B: "reserved/new", C: "complete/reload", D: "reserved/new", E: "reserved/new", F: "complete/timeout",
	}, map[int64]string{slot(0): "reserved", slot(1): "reserved", slot(2): "available", slot(3): "reserved", slot(4): "reserved", slot(5): "available"})
	t.Logf("%s: phase 1 (5 loads, 1 reclaim with reload) done at %s", schema, time.Since(began).Round(time.Millisecond))

	// Phase 2, the web UI: alice and carol click Connect from their machine; bob
	// deletes his reservation before connecting.
	client, err := lab.Guests.NewClient(ctx, "user-pc")
	if err != nil {
		t.Fatal(err)
	}
	s.exec("UPDATE reservation SET remoteIP = ? WHERE id IN (?, ?)", client.IP().String(), A.reservation, D.reservation)
	s.exec("UPDATE request SET laststateid = stateid, stateid = ? WHERE id = ?", messages.StateIDs[messages.StateDeleted], B.request)
	s.waitStates("phase 2", map[*bsRow]string{A: "inuse/reserved", B: "complete/deleted", D: "inuse/reserved"},
		map[int64]string{slot(0): "inuse", slot(1): "available", slot(3): "inuse"})
	t.Logf("%s: phase 2 (2 reserved, 1 reclaim) done at %s", schema, time.Since(began).Round(time.Millisecond))

	// The reservations in use, as their users see them: accounts, the password the web
	// UI shows, SSH from the user's address.
	passwords := map[string]string{}
	for _, u := range []struct {
		row   *bsRow
		slot  *devlab.Slot
		login string
		uid   string
		user  int64
	}{{A, lab.Slots[0], "alice", "20001", bsAlice}, {A, lab.Slots[0], "bob", "20002", bsBob}, {D, lab.Slots[3], "carol", "20003", bsCarol}} {
		if out, err := inGuest(t, u.slot, "id", "-u", u.login); err != nil || strings.TrimSpace(out) != u.uid {
			t.Errorf("%s: %s in guest %s: %q %v", u.row.name, u.login, u.slot.Computer.ShortName, out, err)
		}
		pw := s.password(u.row.reservation, u.user)
		if len(pw) != osconfig.PasswordLength {
			t.Errorf("%s: password of %s in the database: %d characters, want %d", u.row.name, u.login, len(pw), osconfig.PasswordLength)
			continue
		}
		passwords[u.login] = pw
		if got := shadowMatches(t, u.slot, u.login, pw); got != "match" {
			t.Errorf("%s: the password the web UI shows for %s is not the guest's: %s", u.row.name, u.login, got)
		}
	}
	sshCtx, sshCancel := context.WithTimeout(ctx, 30*time.Second)
	out, err := client.Exec(sshCtx, "ssh", "-i", aliceKey, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ConnectTimeout=5", "alice@"+lab.Slots[0].Computer.PrivateIP, "id -un")
	sshCancel()
	if err != nil || strings.TrimSpace(string(out)) != "alice" {
		t.Errorf("alice cannot log in to %s from her address: %q %v", lab.Slots[0].Computer.ShortName, out, err)
	}

	// Phase 3: A's end passes (the bridge moves it to timeout and reclaims it); carol
	// creates an image from D (the web UI makes the image and its revision, points the
	// reservation at it and sets the request to image).
	// end = start, the collapsed window an early end leaves: the reclaim must still run.
	s.exec("UPDATE request SET end = start WHERE id = ?", A.request)
	if err := bt.AddImage(ctx, s.db, bt.ImageSpec{ID: bsCaptured, Name: "centos7lab", PrettyName: "CentOS 7 lab", OSType: messages.OSLinux,
		RevisionID: bsCapturedRev, Revision: 1, ImageName: bsCapturedName, MinRAMMB: 512, MinCPUs: 1, Production: true}, bsCarol); err != nil {
		t.Fatal(err)
	}
	s.exec("UPDATE reservation SET imageid = ?, imagerevisionid = ? WHERE id = ?", bsCaptured, bsCapturedRev, D.reservation)
	s.exec("UPDATE request SET laststateid = stateid, stateid = ? WHERE id = ?", messages.StateIDs[messages.StateImage], D.request)
	s.waitStates("phase 3", map[*bsRow]string{A: "complete/timeout", D: "complete/image"}, map[int64]string{slot(0): "available"})
	// The capture left the computer in reload: the bridge queued VCL's reload request
	// for it (reclaim.pm's insert_reload_request), with the captured image.
	R := &bsRow{name: "R reload after the capture"}
	testutil.WaitFor(t, bsPhaseWait, bsPoll, func() error {
		err := s.db.QueryRow(`SELECT r.id, rs.id FROM request r JOIN reservation rs ON rs.requestid = r.id
			WHERE rs.computerid = ? AND r.id > ? AND rs.imagerevisionid = ?`, slot(3), G.request, bsCapturedRev).Scan(&R.request, &R.reservation)
		if err != nil {
			return err
		}
		if st := s.requestState(R.request); st != "complete/reload" {
			return fmt.Errorf("reload request %d: %s", R.request, st)
		}
		if st := s.computerState(slot(3)); st != "available" {
			return fmt.Errorf("computer %d: %s", slot(3), st)
		}
		return nil
	})
	s.consumerIdle()
	t.Logf("%s: phase 3 (reclaim, capture, reload of the captured image) done at %s", schema, time.Since(began).Round(time.Millisecond))

	// The database as VCL's web UI reads it.
	for r, want := range map[*bsRow]string{A: "complete/timeout", B: "complete/deleted", C: "complete/reload", D: "complete/image",
		E: "reserved/new", F: "complete/timeout", G: "new/new", R: "complete/reload"} {
		if got := s.requestState(r.request); got != want {
			t.Errorf("%s: request %s, want %s", r.name, got, want)
		}
	}
	for i, want := range []struct {
		state    string
		img, rev int64
	}{
		{"available", bsCentos, bsCentosRev}, {"available", bsUbuntu, bsUbuntuRev}, {"available", bsUbuntu, bsUbuntuRev},
		{"available", bsCaptured, bsCapturedRev}, {"reserved", bsUbuntu, bsUbuntuRev},
		{"available", bsUbuntu, bsUbuntuRev}, // F's reclaim loaded the computer's next image
	} {
		id := slot(i)
		var img, rev int64
		if err := s.db.QueryRow("SELECT currentimageid, imagerevisionid FROM computer WHERE id = ?", id).Scan(&img, &rev); err != nil {
			t.Fatal(err)
		}
		if st := s.computerState(id); st != want.state || img != want.img || rev != want.rev {
			t.Errorf("computer %d: %s image %d revision %d, want %s %d/%d", id, st, img, rev, want.state, want.img, want.rev)
		}
	}
	// The loadlog rows of the web UI's progress view, in order, one begin and one
	// exited per claim.
	for r, want := range map[*bsRow]string{
		A: "begin," + bsLoad + ",nodeready,exited," + "begin,reserved,addinguser,postreserve,exited," + "begin,timeout,info,nodeready,exited",
		B: "begin," + bsLoad + ",nodeready,exited," + "begin,deleted,info,nodeready,exited",
		C: "begin," + bsLoad + ",nodeready,exited",
		D: "begin," + bsLoad + ",nodeready,exited," + "begin,reserved,addinguser,postreserve,exited," + "begin,info,info,exited",
		E: "begin," + bsLoad + ",nodeready,exited",
		F: "begin,timeout," + bsReloadOnly + ",nodeready,exited",
		G: "",
		R: "begin," + bsLoad + ",nodeready,exited",
	} {
		if got := strings.Join(s.loadlog(r.reservation), ","); got != want {
			t.Errorf("%s: computerloadlog\n got %s\nwant %s", r.name, got, want)
		}
	}
	if n := s.count("SELECT COUNT(*) FROM vclq_outbox WHERE published IS NULL"); n != 0 {
		t.Errorf("outbox holds %d unpublished messages", n)
	}
	if n := s.count("SELECT COUNT(*) FROM managementnode WHERE id = ? AND lastcheckin >= NOW() - INTERVAL 1 MINUTE", bsMN); n != 1 {
		t.Errorf("management node %d did not check in", bsMN)
	}
	// The capture: its revision (made by the web UI, not duplicated), its size, its disk.
	if n := s.count("SELECT COUNT(*) FROM imagerevision WHERE imageid = ? AND id = ? AND imagename = ?", bsCaptured, bsCapturedRev, bsCapturedName); n != 1 ||
		s.count("SELECT COUNT(*) FROM imagerevision WHERE imageid = ?", bsCaptured) != 1 {
		t.Errorf("captured image revisions: %d", s.count("SELECT COUNT(*) FROM imagerevision WHERE imageid = ?", bsCaptured))
	}
	capturedDir := filepath.Join(lab.Slots[3].Host.DatastoreDir(devlab.Datastore), bsCapturedName)
	wantMB := dirMB(t, capturedDir)
	if size := s.count("SELECT size FROM image WHERE id = ?", bsCaptured); size != wantMB || size <= 0 {
		t.Errorf("image.size of the captured image %d MB, want %d MB (%s)", size, wantMB, capturedDir)
	}
	if _, err := os.Stat(filepath.Join(capturedDir, bsCapturedName+".vmdk")); err != nil {
		t.Errorf("captured base disk: %v", err)
	}

	// Every result succeeded, and no password is anywhere in clear on NATS or in the
	// bridge's outbox.
	s.checkEvents(passwords)

	// The hosts, through govmomi: each slot holds one powered-on VM of the image the
	// database says it carries, with the computer row's MACs and size.
	wantImage := []devlab.ImageSpec{lab.Images[0], lab.Images[1], lab.Images[1],
		{ID: bsCaptured, RevisionID: bsCapturedRev, Revision: 1, Name: bsCapturedName}, lab.Images[1], lab.Images[1]}
	for hi, h := range lab.ESX.Hosts {
		var got, want []string
		for _, v := range hostVMs(t, h) {
			got = append(got, v.Name)
		}
		for i, sl := range lab.Slots {
			if sl.Host != h {
				continue
			}
			im := wantImage[i]
			want = append(want, hypervisor.VMName(hypervisor.SlotFromMessage(sl.Computer), hypervisor.Image{ID: im.ID, Revision: im.Revision}))
			vms := slotVMs(t, sl)
			if len(vms) != 1 {
				continue
			}
			v := vms[0]
			if v.Power != "poweredOn" || v.Extra[hypervisor.KeyImageID] != fmt.Sprint(im.ID) || v.Extra[hypervisor.KeyImageRevisionID] != fmt.Sprint(im.RevisionID) ||
				v.Extra[hypervisor.KeyComputerID] != fmt.Sprint(sl.Computer.ID) {
				t.Errorf("host %d slot %s: VM %s %s metadata %v", hi, sl.Computer.ShortName, v.Name, v.Power, v.Extra)
			}
			if !slices.Equal(v.MACs, []string{sl.Computer.Eth0MAC, sl.Computer.Eth1MAC}) || v.CPUs != int32(sl.Computer.CPUs) || v.MemMB != int32(sl.Computer.RAMMB) {
				t.Errorf("slot %s: VM %s MACs %v CPUs %d memory %d MB, want the computer row's %s %s %d %d",
					sl.Computer.ShortName, v.Name, v.MACs, v.CPUs, v.MemMB, sl.Computer.Eth0MAC, sl.Computer.Eth1MAC, sl.Computer.CPUs, sl.Computer.RAMMB)
			}
		}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("host %s VMs %v, want %v", h.Name, got, want)
		}
	}
	// The guests, from inside: the image each one booted, and A's accounts gone after
	// its reclaim sanitised it.
	for i, sl := range lab.Slots {
		cur, err := inGuest(t, sl, "cat", "/root/currentimage.txt")
		if err != nil || !strings.HasPrefix(cur, wantImage[i].Name+"\n") || !strings.Contains(cur, "vcld_post_load=success") {
			t.Errorf("guest %s currentimage.txt (%v), want %s:\n%s", sl.Computer.ShortName, err, wantImage[i].Name, cur)
		}
	}
	for _, login := range []string{"alice", "bob"} {
		if out, err := inGuest(t, lab.Slots[0], "id", "-u", login); err == nil {
			t.Errorf("%s still exists in %s after the reclaim: %s", login, lab.Slots[0].Computer.ShortName, out)
		}
	}
	t.Logf("%s: done in %s", schema, time.Since(began).Round(time.Millisecond))
}

// siteSpec describes the devlab in VCL's rows: the hosts by their names, the slots
// with their addresses, MACs and sizes, the images by id, revision and folder name.
func (s *bsite) siteSpec(users []bt.UserSpec) bt.SiteSpec {
	spec := bt.SiteSpec{
		ManagementNode: bt.ManagementNodeSpec{ID: bsMN, Hostname: "mn1.vcl.example.edu", IP: s.lab.ManagementIP},
		Profile: bt.ProfileSpec{ID: bsProfile, Name: "vclq devlab ESX", DatastorePath: "/vmfs/volumes/" + devlab.Datastore,
			VMPath: "/vmfs/volumes/" + devlab.Datastore, VirtualSwitch0: "virtualswitch0", VirtualSwitch1: "virtualswitch1", VMDisk: messages.VMDiskShared},
		Users: users,
	}
	hostIDs := map[string]int64{}
	for i, h := range s.lab.ESX.Hosts {
		hostIDs[h.Name] = int64(bsVMHostID + i)
		spec.Hosts = append(spec.Hosts, bt.HostSpec{ComputerID: int64(bsHostComputer + i), VMHostID: int64(bsVMHostID + i), Hostname: h.Name,
			IP: fmt.Sprintf("198.51.100.%d", 240+i)})
	}
	for _, sl := range s.lab.Slots {
		c := sl.Computer
		next := int64(0)
		if sl == s.lab.Slots[5] {
			next = bsUbuntu // F's reclaim loads it
		}
		spec.Slots = append(spec.Slots, bt.SlotSpec{ID: c.ID, VMHostID: hostIDs[sl.Host.Name], Hostname: c.Hostname,
			PrivateIP: c.PrivateIP, PublicIP: c.PrivateIP, Eth0MAC: c.Eth0MAC, Eth1MAC: c.Eth1MAC, RAMMB: c.RAMMB, CPUs: c.CPUs, NextImage: next})
	}
	for _, im := range s.lab.Images {
		name := strings.TrimPrefix(strings.TrimSuffix(im.Name, fmt.Sprintf("-v%d", im.Revision)), "vmwarelinux-")
		spec.Images = append(spec.Images, bt.ImageSpec{ID: im.ID, Name: name, PrettyName: "devlab " + name, OSType: im.OSType,
			RevisionID: im.RevisionID, Revision: im.Revision, ImageName: im.Name, MinRAMMB: 512, MinCPUs: 1, Production: true})
	}
	return spec
}

func (s *bsite) freshDB(ctx context.Context, schema string) *sql.DB {
	t := s.t
	d, err := bt.Create(ctx, schema)
	if errors.Is(err, bt.ErrNoUpstream) {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v (required under CI)", err)
		}
		t.Skipf("%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Drop)
	db := openDB(t, d.DSN)
	grants, err := bt.DocumentedGrants()
	if err != nil {
		t.Fatal(err)
	}
	u, drop, err := bt.CreateUser(ctx, d.Name, grants)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	s.bridgeDB = openDB(t, u.DSN)
	t.Logf("the bridge logs in as %s with the %d documented GRANT statements", u.Quoted, len(grants))
	return db
}

// openDB opens a database with the bridge's DSN options, until the test ends.
func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	dsn, err := bridge.DSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// startWorkers runs a worker pool with the real flows over the devlab, sealing
// passwords to the bridge's key.
func (s *bsite) startWorkers(sealer *flow.Sealer) {
	t := s.t
	h, closeHosts, err := s.handler(sealer, flow.BootWait{Timeout: time.Minute, Interval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(s.js.URL)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := testutilJS(nc)
	// A generous lease: this test kills no worker, and on a loaded machine (2 cores,
	// -race) a 3 s lease can time out a renewal and be lost, which redelivers the job
	// and adds the redelivery's rows to the loadlog this test compares exactly.
	p, err := worker.New(js, nc, h, worker.Config{ID: "bridge-e2e", Concurrency: 6, LeaseTTL: 20 * time.Second, ShutdownGrace: time.Second,
		StopTimeout: 5 * time.Second, RetryDelay: 500 * time.Millisecond, PollWait: 500 * time.Millisecond}, s.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("worker did not stop within 30s")
		}
		closeHosts(context.Background())
		nc.Close()
	})
}

// handler is the devlab's flow handler (lab.Handler). Under the race detector it is
// built the same way with one host call at a time per host: vcsim itself races when
// VMs on one datastore are created or reconfigured concurrently (internal/esxsim's
// doc), which this test's parallel loads on each host would otherwise trigger.
func (s *bsite) handler(sealer *flow.Sealer, boot flow.BootWait) (*flow.Handler, func(context.Context), error) {
	if !raceEnabled() {
		return s.lab.Handler(s.log, sealer, boot)
	}
	setup := s.lab.Setup()
	for i := range setup.Hosts {
		setup.Hosts[i].MaxConcurrent = 1
	}
	cfg, closeHosts, err := setup.Config(s.log)
	if err != nil {
		return nil, nil, err
	}
	cfg.Sealer, cfg.LinuxBootWait, cfg.WindowsBootWait = sealer, boot, boot
	h, err := flow.NewHandler(cfg)
	if err != nil {
		closeHosts(context.Background())
		return nil, nil, err
	}
	return h, closeHosts, nil
}

// raceEnabled reports whether the test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, st := range bi.Settings {
		if st.Key == "-race" {
			return st.Value == "true"
		}
	}
	return false
}

// startBridge runs the bridge in-process, as `vclq bridge` does.
func (s *bsite) startBridge() {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := bridge.New(ctx, s.bridgeDB, s.js.JS, bridge.Config{ManagementNodes: []int64{bsMN}, SealKey: s.key,
		Interval: 200 * time.Millisecond, FetchWait: 200 * time.Millisecond, EventAckWait: 5 * time.Second}, s.log)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(rctx) }()
	t.Cleanup(func() {
		rcancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("bridge: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("bridge did not stop within 30s")
		}
	})
}

// waitStates polls the database (bounded) until the requests and computers are in
// the given states.
func (s *bsite) waitStates(phase string, requests map[*bsRow]string, computers map[int64]string) {
	s.t.Helper()
	deadline := time.Now().Add(bsPhaseWait)
	for {
		var pending []string
		for r, want := range requests {
			if got := s.requestState(r.request); got != want {
				pending = append(pending, fmt.Sprintf("%s: request %s, want %s", r.name, got, want))
			}
		}
		for id, want := range computers {
			if got := s.computerState(id); got != want {
				pending = append(pending, fmt.Sprintf("computer %d: %s, want %s", id, got, want))
			}
		}
		if len(pending) == 0 {
			return
		}
		if time.Now().After(deadline) {
			slices.Sort(pending)
			s.t.Fatalf("%s: not done after %s:\n  %s\nresults:\n%s", phase, bsPhaseWait, strings.Join(pending, "\n  "), s.results())
		}
		time.Sleep(bsPoll)
	}
}

// consumerIdle waits (bounded) until the bridge applied every event.
func (s *bsite) consumerIdle() {
	s.t.Helper()
	testutil.WaitFor(s.t, 20*time.Second, bsPoll, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := s.js.JS.Consumer(ctx, messages.StreamEvents, messages.ConsumerBridge)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("bridge consumer: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// checkEvents: every result on VCL_EVENTS is a success, and no password is in any
// event or outbox payload.
func (s *bsite) checkEvents(passwords map[string]string) {
	t := s.t
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := s.js.JS.Stream(ctx, messages.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sealed := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		for login, pw := range passwords {
			if strings.Contains(string(m.Data), pw) {
				t.Errorf("event %d (%s) holds %s's password in clear", seq, m.Subject, login)
			}
		}
		ev := eventlog.Decode(m.Subject, m.Data)
		if ev.Result != nil {
			if ev.Result.Outcome != messages.OutcomeSuccess {
				t.Errorf("result of reservation %d (%s): %s %s %s", ev.Result.ReservationID, ev.Result.Kind, ev.Result.Outcome, ev.Result.ErrorCode, ev.Result.Error)
			}
			sealed += len(ev.Result.Passwords)
		}
	}
	if sealed != len(passwords) {
		t.Errorf("%d sealed passwords in results, want %d", sealed, len(passwords))
	}
	for login, pw := range passwords {
		if n := s.count("SELECT COUNT(*) FROM vclq_outbox WHERE INSTR(payload, ?) > 0", pw); n != 0 {
			t.Errorf("%d outbox payloads hold %s's password", n, login)
		}
	}
}

// results summarises the result events, for failure messages.
func (s *bsite) results() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	_ = eventlog.Read(ctx, s.js.JS, eventlog.Filter{Type: "result", IdleTimeout: 2 * time.Second}, func(ev eventlog.Event) error {
		if r := ev.Result; r != nil {
			fmt.Fprintf(&b, "  reservation %d %s: %s %s/%s %s %s\n", r.ReservationID, r.Kind, r.Outcome, r.RequestState, r.ComputerState, r.ErrorCode, r.Error)
		}
		return nil
	})
	return b.String()
}

func (s *bsite) exec(q string, args ...any) {
	s.t.Helper()
	if _, err := s.db.Exec(q, args...); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
}

func (s *bsite) count(q string, args ...any) int64 {
	s.t.Helper()
	var n int64
	if err := s.db.QueryRow(q, args...).Scan(&n); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// requestState is "state/laststate" of a request, by VCL's state names.
func (s *bsite) requestState(id int64) string {
	s.t.Helper()
	st, err := bt.RequestState(context.Background(), s.db, id)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

func (s *bsite) computerState(id int64) string {
	s.t.Helper()
	st, err := bt.ComputerState(context.Background(), s.db, id)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// loadlog lists a reservation's computerloadlog rows by loadstate name (resolved
// through computerloadstate, as the web UI does), in id order, and checks that each
// row is on the reservation's computer and that their times never go back.
func (s *bsite) loadlog(reservation int64) []string {
	s.t.Helper()
	rows, err := s.db.Query(`SELECT st.loadstatename, l.computerid = rs.computerid, UNIX_TIMESTAMP(l.timestamp)
		FROM computerloadlog l JOIN computerloadstate st ON st.id = l.loadstateid JOIN reservation rs ON rs.id = l.reservationid
		WHERE l.reservationid = ? ORDER BY l.id`, reservation)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	var last int64
	for rows.Next() {
		var name string
		var sameComputer bool
		var ts int64
		if err := rows.Scan(&name, &sameComputer, &ts); err != nil {
			s.t.Fatal(err)
		}
		if !sameComputer {
			s.t.Errorf("reservation %d: loadlog row %s on another computer", reservation, name)
		}
		if ts < last {
			s.t.Errorf("reservation %d: loadlog row %s goes back in time (%d < %d)", reservation, name, ts, last)
		}
		last = ts
		out = append(out, name)
	}
	if err := rows.Err(); err != nil {
		s.t.Fatal(err)
	}
	return out
}

// password is what the web UI shows a reservation's user: reservation.pw for the
// request's user, reservationaccounts.password for the others.
func (s *bsite) password(reservation, user int64) string {
	s.t.Helper()
	var pw sql.NullString
	err := s.db.QueryRow(`SELECT IF(r.userid = ?, rs.pw, (SELECT a.password FROM reservationaccounts a WHERE a.reservationid = rs.id AND a.userid = ?))
		FROM reservation rs JOIN request r ON r.id = rs.requestid WHERE rs.id = ?`, user, user, reservation).Scan(&pw)
	if err != nil {
		s.t.Fatalf("reservation %d password of user %d: %v", reservation, user, err)
	}
	return pw.String
}

// shadowMatches checks a password against the login's hash in the guest's
// /etc/shadow (crypt(3), through perl; the password goes in on stdin).
func shadowMatches(t *testing.T, sl *devlab.Slot, login, pw string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const script = `my $pw = <STDIN>; chomp $pw; open(my $f, "<", "/etc/shadow") or die "shadow: $!";
while (<$f>) { my @f = split /:/; if ($f[0] eq $ARGV[0]) { print((crypt($pw, $f[1]) eq $f[1]) ? "match" : "mismatch"); exit 0 } }
print "no such user";`
	out, err := sl.Guest.Exec(ctx, []byte(pw+"\n"), "perl", "-e", script, login)
	if err != nil {
		return err.Error()
	}
	return string(out)
}

// dirMB is the size of a folder's files in MB, rounded up (VCL's image.size).
func dirMB(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Errorf("captured image folder: %v", err)
		return -1
	}
	var n int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return (n + 1<<20 - 1) >> 20
}
