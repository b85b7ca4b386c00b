package bridge

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	bt "github.com/vclq/vclq/bridge/bridgetest"
	"github.com/vclq/vclq/internal/testutil"
)

// asUser opens the site's database as a new user holding grants (documented form).
func (s *site) asUser(t *testing.T, grants []string) (*sql.DB, bt.User) {
	t.Helper()
	name := s.dbName()
	u, drop, err := bt.CreateUser(context.Background(), name, grants)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	dsn, err := DSN(u.DSN)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, u
}

func (s *site) dbName() string {
	c, err := mysql.ParseDSN(s.dsn)
	if err != nil {
		s.t.Fatal(err)
	}
	return c.DBName
}

func documentedGrants(t *testing.T) []string {
	t.Helper()
	g, err := bt.DocumentedGrants()
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// TestDocumentedGrantsMatchTheCode: docs/bridge.md lists exactly the privileges the
// bridge checks.
func TestDocumentedGrantsMatchTheCode(t *testing.T) {
	want := Statements("vcl", "'vclq'@'%'")
	got := documentedGrants(t)
	t.Logf("%d documented grants", len(got))
	if !slices.Equal(got, want) {
		t.Errorf("docs/bridge.md grants:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestDocumentedGrantsRunTheSite: a user holding exactly the documented grants runs
// the whole fixture site through the bridge and the workers (claims, loadlog rows,
// results, passwords in reservation.pw and the web UI's NULL reservationaccounts rows,
// capture, reload requests, lastcheckin).
func TestDocumentedGrantsRunTheSite(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		db, u := s.asUser(t, documentedGrants(t))
		s.exec("UPDATE managementnode SET lastcheckin = NULL WHERE id = ?", mnOurs)
		j := testutil.StartVCLJetStream(t, e2eStreams())
		key, _ := NewSealKey(nil)
		rows := siteRows()
		addRows(s, rows)
		startWorkers(t, j, 1, &bt.StateExit{SealTo: key.PublicKey(), Step: 5 * time.Millisecond})
		lim := &site{t: t, db: db, dsn: s.dsn, schema: s.schema, logs: s.logs, log: s.log}
		b := newBridge(t, lim, j, Config{SealKey: key, Interval: 200 * time.Millisecond})
		done := make(chan error, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { done <- b.Run(ctx) }()
		waitSite(t, s, rows, 60*time.Second)
		consumerIdle(t, j, 20*time.Second)
		checkSite(t, s, rows)
		select {
		case err := <-done:
			t.Fatalf("bridge stopped: %v", err)
		default:
		}
		n := s.count("SELECT COUNT(*) FROM reservationaccounts WHERE reservationid = ? AND password IS NOT NULL AND password <> ''", rows[0].reservation)
		checkins := s.count("SELECT COUNT(*) FROM managementnode WHERE id = ? AND lastcheckin > NOW() - INTERVAL 1 MINUTE", mnOurs)
		t.Logf("user %s: %d rows done, %d account passwords stored, lastcheckin current: %d", u.Quoted, len(rows), n, checkins)
		if n != 1 || checkins != 1 {
			t.Errorf("account passwords %d (want 1), lastcheckin current %d (want 1)", n, checkins)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if strings.Contains(s.logs.String(), "denied") {
			t.Errorf("a statement was denied:\n%s", s.logs.String())
		}
	})
}

// TestMissingGrantIsNamed: with any one documented grant missing, the check at start
// fails with ErrPrivileges naming exactly that grant.
func TestMissingGrantIsNamed(t *testing.T) {
	forEachSchema(t, func(t *testing.T, s *site) {
		all := documentedGrants(t)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := EnsureTables(ctx, s.db); err != nil {
			t.Fatal(err)
		}
		named := 0
		for i, miss := range all {
			t.Run(strings.Fields(miss)[1]+"_"+strings.Fields(miss)[len(strings.Fields(miss))-3], func(t *testing.T) {
				if strings.Contains(miss, "CREATE") {
					// The bridge's own table: CREATE and the rest are needed (and granted,
					// in MariaDB) together only while the table does not exist.
					on := strings.Fields(miss)[len(strings.Fields(miss))-3]
					table := strings.Trim(strings.Split(on, ".")[1], "`")
					s.exec("DROP TABLE IF EXISTS `" + table + "`")
					defer func() {
						if err := EnsureTables(ctx, s.db); err != nil {
							t.Fatal(err)
						}
					}()
				}
				db, u := s.asUser(t, slices.Delete(slices.Clone(all), i, i+1))
				err := CheckPrivileges(ctx, db)
				want := "\n    " + u.Grant(miss, s.dbName())
				if !errors.Is(err, ErrPrivileges) || !strings.HasSuffix(err.Error(), want) || strings.Count(err.Error(), "GRANT") != 1 {
					t.Fatalf("without %s: %v", miss, err)
				}
				named++
			})
		}
		t.Logf("%d of %d grants named when missing", named, len(all))
		if named != len(all) {
			t.Errorf("only %d of %d", named, len(all))
		}
		// And all of them: nothing is missing.
		db, _ := s.asUser(t, all)
		if err := CheckPrivileges(ctx, db); err != nil {
			t.Errorf("documented grants: %v", err)
		}
	})
}

// TestRevokedGrantStopsTheBridge: a privilege revoked while the bridge runs (issue
// 11: UPDATE on vclq_outbox, then on reservationaccounts) stops it within seconds
// with ErrPrivileges, instead of retrying forever; lastcheckin is not updated after.
func TestRevokedGrantStopsTheBridge(t *testing.T) {
	for _, c := range []struct{ name, revoke, stmt string }{
		{"poll: check-in", "UPDATE ON `%s`.`managementnode`", "new"},
		{"event: reservationaccounts", "UPDATE ON `%s`.`reservationaccounts`", "new"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newSite(t, bt.SchemaOwn)
			db, u := s.asUser(t, documentedGrants(t))
			j := testutil.StartVCLJetStream(t, e2eStreams())
			key, _ := NewSealKey(nil)
			startWorkers(t, j, 1, &bt.StateExit{SealTo: key.PublicKey()})
			lim := &site{t: t, db: db, dsn: s.dsn, schema: s.schema, logs: s.logs, log: s.log}
			b := newBridge(t, lim, j, Config{SealKey: key, Interval: 100 * time.Millisecond})
			s.exec("REVOKE " + fmt.Sprintf(c.revoke, s.dbName()) + " FROM " + u.Quoted)
			start := time.Now()
			done := make(chan error, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			go func() { done <- b.Run(ctx) }()
			s.add(req{state: "new", computer: 110, accounts: []int64{userBob}})
			select {
			case err := <-done:
				t.Logf("stopped after %v: %v", time.Since(start).Round(time.Millisecond), err)
				if !errors.Is(err, ErrPrivileges) || !strings.Contains(err.Error(), "1142") {
					t.Errorf("Run: %v, want ErrPrivileges (1142)", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("bridge still running 20 s after the revoke")
			}
		})
	}
}
