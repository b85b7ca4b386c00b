package bridge

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/nats-io/nats.go/jetstream"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/testutil"
	"github.com/vclq/vclq/messages"
	"github.com/vclq/vclq/streams"
)

func TestDue(t *testing.T) {
	pre := 35 * time.Minute
	for _, tc := range []struct {
		state  string
		until  time.Duration
		remote string
		want   bool
	}{
		{"new", -time.Minute, "", true},
		{"new", 0, "", true},
		{"new", 20 * time.Minute, "", true},
		{"new", 35 * time.Minute, "", true},
		{"new", 36 * time.Minute, "", false},
		{"reload", 2 * time.Hour, "", false},
		{"reload", time.Minute, "", true},
		{"reinstall", 2 * time.Hour, "", true},
		{"timeout", 2 * time.Hour, "", true},
		{"deleted", 2 * time.Hour, "", true},
		{"image", 2 * time.Hour, "", true},
		{"reserved", 0, "", false},
		{"reserved", 0, "203.0.113.9", true},
		{"inuse", 0, "203.0.113.9", false},
		{"complete", 0, "", false},
	} {
		if got := Due(tc.state, tc.until, pre, tc.remote); got != tc.want {
			t.Errorf("Due(%s, %s, %q) = %v, want %v", tc.state, tc.until, tc.remote, got, tc.want)
		}
	}
}

func TestKindForState(t *testing.T) {
	for state, want := range map[string]messages.Kind{
		"new": messages.KindNew, "reload": messages.KindReload, "reinstall": messages.KindNew,
		"timeout": messages.KindReclaim, "deleted": messages.KindReclaim, "image": messages.KindImage,
		"reserved": messages.KindReserved,
	} {
		if got, ok := KindForState(state); !ok || got != want {
			t.Errorf("KindForState(%s) = %s, %v", state, got, ok)
		}
	}
	if _, ok := KindForState("inuse"); ok {
		t.Error("inuse is not polled")
	}
}

// newBridge makes a bridge on the site's database and j's JetStream.
func newBridge(t testing.TB, s *site, j *testutil.JetStream, cfg Config) *Bridge {
	t.Helper()
	if cfg.ManagementNodes == nil {
		cfg.ManagementNodes = []int64{mnOurs}
	}
	if cfg.Interval == 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = 100 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 300 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := New(ctx, s.db, j.JS, cfg, s.log)
	if err != nil {
		t.Fatalf("bridge.New: %v", err)
	}
	return b
}

// run starts b.Run and returns a stop function that cancels and waits (also on
// cleanup). done receives Run's error.
func run(t testing.TB, b *Bridge) (stop func(), done <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- b.Run(ctx) }()
	var once sync.Once
	var err error
	res := make(chan error, 1)
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err = <-ch:
			case <-time.After(20 * time.Second):
				err = errors.New("bridge did not stop")
			}
			res <- err
		})
	}
	t.Cleanup(stop)
	return stop, res
}

// queued reads every request message in VCL_REQUESTS without consuming it.
func queued(t testing.TB, j *testutil.JetStream) []*messages.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := j.JS.Stream(ctx, messages.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*messages.Request
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		r, err := messages.DecodeRequest(m.Data)
		if err != nil {
			t.Fatalf("queued message %d does not decode: %v", seq, err)
		}
		if got, want := m.Header.Get(messages.HeaderMsgID), r.MsgID(); got != want && !strings.HasPrefix(got, want+"-c") {
			t.Errorf("message %d: Nats-Msg-Id %q, want %q", seq, got, want)
		}
		out = append(out, r)
	}
	return out
}

func byReservation(rs []*messages.Request) map[int64]*messages.Request {
	m := map[int64]*messages.Request{}
	for _, r := range rs {
		m[r.Reservation.ID] = r
	}
	return m
}

func TestPollClaimsDueRowsAndPublishes(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		type row struct {
			r           req
			due         bool
			kind        messages.Kind
			reservation int64
			request     int64
		}
		rows := []*row{
			{r: req{state: "new", computer: 110, accounts: []int64{userBob}}, due: true, kind: messages.KindNew},
			{r: req{state: "new", computer: 111, start: 20 * time.Minute, rev: revWin, user: userCarol}, due: true, kind: messages.KindNew},
			{r: req{state: "new", computer: 112, start: 2 * time.Hour}, due: false},
			{r: req{state: "reload", computer: 113, user: 2}, due: true, kind: messages.KindReload},
			{r: req{state: "reinstall", last: "inuse", computer: 114, start: 2 * time.Hour}, due: true, kind: messages.KindNew},
			{r: req{state: "timeout", last: "inuse", computer: 115, start: -time.Hour}, due: true, kind: messages.KindReclaim},
			{r: req{state: "deleted", last: "reserved", computer: 110, start: -time.Hour}, due: true, kind: messages.KindReclaim},
			{r: req{state: "image", last: "inuse", computer: 111, rev: revCustom, start: -time.Hour}, due: true, kind: messages.KindImage},
			{r: req{state: "reserved", last: "new", computer: 112, start: -time.Minute}, due: false},
			{r: req{state: "reserved", last: "new", computer: 113, start: -time.Minute, remoteIP: "203.0.113.9"}, due: true, kind: messages.KindReserved},
			{r: req{state: "new", computer: 114, mn: mnOther}, due: false},
			{r: req{state: "inuse", last: "reserved", computer: 115, start: -time.Hour}, due: false},
		}
		// An inuse reservation whose end has passed: vcld's inuse.pm times it out, and
		// the same poll reclaims it.
		endedReq, endedRes := s.add(req{state: "inuse", last: "reserved", computer: 112, start: -3 * time.Hour})
		for _, r := range rows {
			r.request, r.reservation = s.add(r.r)
		}
		b := newBridge(t, s, j, Config{})
		ctx := context.Background()
		st, err := b.PollOnce(ctx)
		if err != nil {
			t.Fatalf("PollOnce: %v", err)
		}
		want := 0
		for _, r := range rows {
			if r.due {
				want++
			}
		}
		want++ // the ended one
		if st.Claimed != want || st.Published != want || st.Failed != 0 || st.Expired != 1 {
			t.Fatalf("poll stats %+v, want %d claimed and published, 1 expired", st, want)
		}
		msgs := byReservation(queued(t, j))
		if len(msgs) != want {
			t.Fatalf("%d messages queued, want %d", len(msgs), want)
		}
		if got := s.requestState(endedReq); got != "pending/timeout" || msgs[endedRes] == nil || msgs[endedRes].Kind != messages.KindReclaim {
			t.Errorf("ended inuse reservation: %s, queued %v", got, msgs[endedRes] != nil)
		}
		for _, r := range rows {
			m := msgs[r.reservation]
			got := s.requestState(r.request)
			if !r.due {
				if m != nil || got != r.r.state+"/"+orDefault(r.r.last, r.r.state) {
					t.Errorf("%s on %d: not due but queued=%v state=%s", r.r.state, r.r.computer, m != nil, got)
				}
				continue
			}
			if got != "pending/"+r.r.state {
				t.Errorf("request %d: state %s, want pending/%s", r.request, got, r.r.state)
			}
			if m == nil {
				t.Errorf("reservation %d (%s) not queued", r.reservation, r.r.state)
				continue
			}
			if m.Kind != r.kind || m.Request.State != r.r.state || m.Computer.ID != r.r.computer {
				t.Errorf("reservation %d: kind %s state %s computer %d", r.reservation, m.Kind, m.Request.State, m.Computer.ID)
			}
			if m.Request.Modified.IsZero() || m.ManagementNodeIP != "192.0.2.1" {
				t.Errorf("reservation %d: modified %v, management node IP %q", r.reservation, m.Request.Modified, m.ManagementNodeIP)
			}
			if log := s.loadlog(r.reservation); len(log) != 1 || !strings.HasPrefix(log[0], "begin:") {
				t.Errorf("reservation %d: loadlog %q, want one begin row", r.reservation, log)
			}
		}
		// The join: computer, host, profile, image, users.
		first := msgs[rows[0].reservation]
		if first.Computer.ShortName != "vm-110" || first.Computer.PrivateIP != "192.0.2.110" || first.Computer.Eth0MAC != "00:50:56:00:00:6e" ||
			first.VMHost.Hostname != "esx-01.vcl.example.edu" || first.VMHost.Profile.DatastorePath != "/vmfs/volumes/datastore1" ||
			first.Image.Name != "vmwarelinux-centos7-v1" || first.Image.OSType != messages.OSLinux || first.Image.RevisionID != revLinux {
			t.Errorf("new request joined wrong: %+v", first)
		}
		if len(first.Users) != 2 || first.Users[0].Login != "alice" || first.Users[0].UID != 20001 || len(first.Users[0].SSHKeys) != 1 || first.Users[1].Login != "bob" {
			t.Errorf("users %+v, want alice (with key) then bob", first.Users)
		}
		if w := msgs[rows[1].reservation]; w.Image.OSType != messages.OSWindows || w.Users[0].Login != "carol" || w.VMHost.Hostname != "esx-01.vcl.example.edu" {
			t.Errorf("windows request: %+v", w)
		}
		if im := msgs[rows[7].reservation]; im.TargetImage == nil || im.TargetImage.Name != "vmwarelinux-centos7custom-v0" || im.Image.Name != "vmwarelinux-centos7-v1" {
			t.Errorf("image request: image %+v target %+v", im.Image, im.TargetImage)
		}
		if rv := msgs[rows[9].reservation]; rv.RemoteIP != "203.0.113.9" || rv.VMHost.Hostname != "esx-02.vcl.example.edu" {
			t.Errorf("reserved request: remote %q host %q", rv.RemoteIP, rv.VMHost.Hostname)
		}
		// A second poll finds nothing to do.
		st, err = b.PollOnce(ctx)
		if err != nil || st.Claimed+st.Published+st.Failed != 0 {
			t.Fatalf("second poll: %+v, %v", st, err)
		}
		if n := s.count("SELECT COUNT(*) FROM vclq_outbox WHERE published IS NULL"); n != 0 {
			t.Errorf("outbox holds %d rows after publishing", n)
		}
		if n := s.count("SELECT COUNT(*) FROM managementnode WHERE id = ? AND lastcheckin > NOW() - INTERVAL 1 MINUTE", mnOurs); n != 1 {
			t.Error("lastcheckin not updated")
		}
		if n := s.count("SELECT COUNT(*) FROM managementnode WHERE id = ? AND lastcheckin IS NOT NULL AND lastcheckin > '2000-01-01'", mnOther); n != 0 {
			t.Error("another management node's lastcheckin was touched")
		}
	})
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func TestBadRowsFailWithReason(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		// 111: no vmhost; 112: hostile hostname; 113: an image of an OS vclq cannot run.
		s.exec("UPDATE computer SET vmhostid = NULL WHERE id = 111")
		s.exec("UPDATE computer SET hostname = 'vm-112;rm -rf /' WHERE id = 112")
		good, goodRes := s.add(req{state: "new", computer: 110})
		noHost, noHostRes := s.add(req{state: "new", computer: 111})
		hostile, hostileRes := s.add(req{state: "new", computer: 112})
		solaris, solarisRes := s.add(req{state: "new", computer: 113, rev: bt.RevSolaris})
		badUser, badUserRes := s.add(req{state: "new", computer: 114, user: 1}) // "admin": fine login, but let us break it:
		s.exec("UPDATE user SET unityid = 'Bad User!' WHERE id = 1")
		// A cluster request: two reservations.
		cluster, clusterRes := s.add(req{state: "new", computer: 115})
		s.exec("INSERT INTO reservation (requestid, computerid, imageid, imagerevisionid, managementnodeid) VALUES (?, 110, ?, ?, ?)", cluster, imgLinux, revLinux, mnOurs)

		b := newBridge(t, s, j, Config{})
		st, err := b.PollOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Claimed != 1 || st.Failed != 5 {
			t.Errorf("stats %+v, want 1 claimed, 5 failed", st)
		}
		if got := s.requestState(good); got != "pending/new" {
			t.Errorf("good row: %s", got)
		}
		for _, bad := range []struct {
			request, reservation int64
			reason               string
		}{
			{noHost, noHostRes, "has no vmhost"},
			{hostile, hostileRes, "computer.hostname"},
			{solaris, solarisRes, `OS type "unix"`},
			{badUser, badUserRes, "users[0].login"},
			{cluster, clusterRes, "cluster requests are not supported"},
		} {
			if got := s.requestState(bad.request); got != "failed/new" {
				t.Errorf("request %d: %s, want failed/new", bad.request, got)
			}
			log := s.loadlog(bad.reservation)
			if len(log) != 1 || !strings.HasPrefix(log[0], "failed:vclq bridge:") || !strings.Contains(log[0], bad.reason) {
				t.Errorf("request %d: loadlog %q, want a failed row with %q", bad.request, log, bad.reason)
			}
		}
		msgs := queued(t, j)
		if len(msgs) != 1 || msgs[0].Reservation.ID != goodRes {
			t.Errorf("queued %d messages, want only reservation %d", len(msgs), goodRes)
		}
		// Failed rows are not read again.
		st, err = b.PollOnce(context.Background())
		if err != nil || st.Due != 0 {
			t.Errorf("second poll %+v %v", st, err)
		}
	})
}

// TestClaimIsExclusive: two bridges and a legacy vcld (the same compare-and-set
// UPDATE) race for the same rows; every row is taken exactly once and only the
// bridges' rows are queued.
func TestClaimIsExclusive(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		var ids []int64
		for i := 0; i < 30; i++ {
			id, _ := s.add(req{state: "new", computer: firstVM + int64(i%6)})
			ids = append(ids, id)
		}
		b1 := newBridge(t, s, j, Config{})
		b2 := newBridge(t, s, j, Config{})
		var wg sync.WaitGroup
		stats := make([]PollStats, 2)
		vcld := 0
		for i, b := range []*Bridge{b1, b2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				st, err := b.PollOnce(context.Background())
				if err != nil {
					t.Errorf("bridge %d: %v", i, err)
				}
				stats[i] = st
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, id := range slices.Backward(ids) {
				res, err := s.db.Exec("UPDATE request SET stateid = 14, laststateid = 13 WHERE id = ? AND stateid = 13 AND laststateid = 13", id)
				if err != nil {
					t.Error(err)
					return
				}
				if n, _ := res.RowsAffected(); n == 1 {
					vcld++
				}
			}
		}()
		wg.Wait()
		bridged := stats[0].Claimed + stats[1].Claimed
		if bridged+vcld != len(ids) {
			t.Fatalf("bridges claimed %d + %d, vcld %d: want %d in all", stats[0].Claimed, stats[1].Claimed, vcld, len(ids))
		}
		msgs := queued(t, j)
		if len(msgs) != bridged {
			t.Fatalf("%d queued, want %d", len(msgs), bridged)
		}
		if n := s.count("SELECT COUNT(*) FROM computerloadlog l JOIN computerloadstate s ON s.id = l.loadstateid WHERE s.loadstatename = 'begin'"); n != bridged {
			t.Errorf("%d begin rows, want %d", n, bridged)
		}
		if n := s.count("SELECT COUNT(*) FROM request WHERE stateid = 14"); n != len(ids) {
			t.Errorf("%d pending, want %d", n, len(ids))
		}
		t.Logf("bridge 1: %d, bridge 2: %d, vcld: %d", stats[0].Claimed, stats[1].Claimed, vcld)
	})
}

// TestReinstallTwiceIsQueuedTwice: vcld's state changes leave request.datemodified
// alone, so a second reinstall of a reservation has the same Request.MsgID() as the
// first; the bridge gives the second claim its own id so that JetStream does not drop
// it as a duplicate.
func TestReinstallTwiceIsQueuedTwice(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		j := testutil.StartVCLJetStream(t, streams.Options{})
		id, rs := s.add(req{state: "reinstall", last: "inuse", computer: 110, start: -time.Hour})
		b := newBridge(t, s, j, Config{})
		ctx := context.Background()
		for round := 1; round <= 2; round++ {
			st, err := b.PollOnce(ctx)
			if err != nil || st.Claimed != 1 || st.Published != 1 {
				t.Fatalf("round %d: %+v, %v", round, st, err)
			}
			msgs := queued(t, j)
			if len(msgs) != 1 || msgs[0].Reservation.ID != rs {
				t.Fatalf("round %d: %d queued, want the reinstall", round, len(msgs))
			}
			// A worker took it and the reservation is back in use; then the user asks
			// for another reinstall. datemodified does not change.
			str, err := j.JS.Stream(ctx, messages.StreamRequests)
			if err != nil {
				t.Fatal(err)
			}
			if err := str.Purge(ctx); err != nil {
				t.Fatal(err)
			}
			s.exec("UPDATE request SET stateid = 8, laststateid = 27 WHERE id = ?", id)
			s.exec("UPDATE request SET stateid = 27, laststateid = 8 WHERE id = ?", id)
		}
	})
}

// TestSiteTimeZone: a site whose database session runs in another time zone than UTC
// (the web UI writes local wall-clock times): start times are compared with the
// database's NOW() and reach the message as the right instant.
func TestSiteTimeZone(t *testing.T) {
	s := newSite(t, bt.SchemaOwn)
	cfg, err := mysql.ParseDSN(s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params["time_zone"] = "'+05:00'"
	local, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	s.db = local // the fixture writes local times too
	_, rs := s.add(req{state: "new", computer: 110, start: 10 * time.Minute})
	s.add(req{state: "new", computer: 111, start: 50 * time.Minute})
	j := testutil.StartVCLJetStream(t, streams.Options{})
	b := newBridge(t, s, j, Config{})
	st, err := b.PollOnce(context.Background())
	if err != nil || st.Claimed != 1 {
		t.Fatalf("%+v, %v: want only the request due in 10 minutes", st, err)
	}
	m := byReservation(queued(t, j))[rs]
	if m == nil {
		t.Fatal("not queued")
	}
	if d := time.Until(m.Request.Start); d < 8*time.Minute || d > 12*time.Minute {
		t.Errorf("start is %s from now, want 10m (time zone lost)", d)
	}
}
