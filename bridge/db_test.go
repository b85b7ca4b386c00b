package bridge

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	bt "github.com/vclq/vclq/bridge/bridgetest"
)

var (
	serverOnce sync.Once
	serverErr  error
)

// needMaria skips (or fails under CI) when MariaDB is unreachable.
func needMaria(t testing.TB) {
	t.Helper()
	serverOnce.Do(func() { serverErr = bt.Reachable(context.Background()) })
	if serverErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("MariaDB at %s is unreachable and CI is set: %v", bt.Addr(), serverErr)
		}
		t.Skipf("MariaDB at %s is unreachable (start it with scripts/test-deps.sh): %v", bt.Addr(), serverErr)
	}
}

// schemas the bridge tests run against: vclq's own minimal schema
// (testdata/schema.sql) and Apache VCL's vcl.sql.
var schemas = []string{bt.SchemaOwn, bt.SchemaUpstream}

// freshDB creates a uniquely named database loaded with the schema, dropped when the
// test ends, and returns a bridge connection (DSN-normalised) and its DSN.
func freshDB(t testing.TB, schema string) (*sql.DB, string) {
	t.Helper()
	needMaria(t)
	d, err := bt.Create(context.Background(), schema)
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
	dsn, err := DSN(d.DSN)
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, dsn
}

// site is the fixture VCL site of bridgetest.LoadSite on a fresh database.
type site struct {
	t      testing.TB
	db     *sql.DB
	dsn    string
	schema string
	logs   *logBuffer // every bridge's log output
	log    zerolog.Logger
}

const (
	mnOurs, mnOther     = bt.MNOurs, bt.MNOther
	imgLinux, imgWin    = bt.ImgLinux, bt.ImgWin
	imgCustom           = bt.ImgCustom
	revLinux, revWin    = bt.RevLinux, bt.RevWin
	revCustom           = bt.RevCustom
	userAlice, userBob  = bt.UserAlice, bt.UserBob
	userCarol, userDave = bt.UserCarol, bt.UserDave
	firstVM             = bt.FirstVM
)

func newSite(t testing.TB, schema string) *site {
	t.Helper()
	db, dsn := freshDB(t, schema)
	s := &site{t: t, db: db, dsn: dsn, schema: schema}
	s.log, s.logs = testLog(t)
	if err := bt.LoadSite(context.Background(), db, 0); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *site) exec(q string, args ...any) sql.Result {
	s.t.Helper()
	res, err := s.db.Exec(q, args...)
	if err != nil {
		s.t.Fatalf("%s: %v", strings.Join(strings.Fields(q), " "), err)
	}
	return res
}

// req describes a request to insert (see bridgetest.Req).
type req struct {
	state, last string
	computer    int64
	rev         int64
	user        int64
	start       time.Duration
	remoteIP    string
	mn          int64
	accounts    []int64
}

// add inserts a request and its reservation and returns their ids.
func (s *site) add(r req) (requestID, reservationID int64) {
	s.t.Helper()
	q, rs, err := bt.AddRequest(context.Background(), s.db, bt.Req{
		State: r.state, Last: r.last, Computer: r.computer, Rev: r.rev, User: r.user,
		Start: r.start, RemoteIP: r.remoteIP, MN: r.mn, Accounts: r.accounts,
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return q, rs
}

// requestState is "state/laststate" of a request, by VCL's state names.
func (s *site) requestState(id int64) string {
	s.t.Helper()
	st, err := bt.RequestState(context.Background(), s.db, id)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

func (s *site) computerState(id int64) string {
	s.t.Helper()
	st, err := bt.ComputerState(context.Background(), s.db, id)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// loadlog lists "name:info" of a reservation's computerloadlog rows in id order.
func (s *site) loadlog(reservation int64) []string {
	s.t.Helper()
	rows, err := s.db.Query(`SELECT s.loadstatename, COALESCE(l.additionalinfo, '') FROM computerloadlog l JOIN computerloadstate s ON s.id = l.loadstateid WHERE l.reservationid = ? ORDER BY l.id`, reservation)
	if err != nil {
		s.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n, i string
		if err := rows.Scan(&n, &i); err != nil {
			s.t.Fatal(err)
		}
		out = append(out, n+":"+i)
	}
	return out
}

func (s *site) count(q string, args ...any) int {
	s.t.Helper()
	var n int
	if err := s.db.QueryRow(q, args...).Scan(&n); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// logBuffer collects log output safely for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testLog logs to a buffer and, with -v, to the test log.
func testLog(t testing.TB) (zerolog.Logger, *logBuffer) {
	lb := &logBuffer{}
	var w = zerolog.MultiLevelWriter(lb)
	if testing.Verbose() {
		w = zerolog.MultiLevelWriter(lb, zerolog.NewTestWriter(t))
	}
	return zerolog.New(w).With().Timestamp().Logger(), lb
}

// forEachSchema runs f as a subtest on each schema, each with a fresh database.
func forEachSchema(t *testing.T, f func(t *testing.T, s *site)) {
	for _, schema := range schemas {
		t.Run(schema, func(t *testing.T) { f(t, newSite(t, schema)) })
	}
}
