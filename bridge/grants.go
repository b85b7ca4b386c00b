package bridge

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// ErrPrivileges is wrapped when the bridge's database account lacks a privilege the
// bridge needs (found by CheckPrivileges at start), or when the server refuses a
// statement, a login or a database while the bridge runs. Either is a configuration
// error: the bridge stops instead of retrying.
var ErrPrivileges = errors.New("bridge: database privileges")

// Grant is one table privilege the bridge needs.
type Grant struct {
	Privilege string // SELECT, INSERT, UPDATE, DELETE, CREATE
	Table     string
	// column the probe statement names (INSERT, UPDATE).
	column string
}

// statement is the GRANT statement giving privs on table (or "*") of database db to
// user ('name'@'host', quoted), as an operator pastes it.
func statement(privs []string, db, table, user string) string {
	on := "`" + db + "`.*"
	if table != "*" {
		on = "`" + db + "`.`" + table + "`"
	}
	return fmt.Sprintf("GRANT %s ON %s TO %s;", strings.Join(privs, ", "), on, user)
}

// Statements are the GRANT statements of every privilege the bridge needs on
// database db for user: SELECT on the database, then one statement per table (the
// privileges in Grants' order). MariaDB grants privileges on a table that does not
// exist yet (the bridge's own) only together with CREATE, hence one statement per
// table.
func Statements(db, user string) []string {
	return groupStatements(append([]Grant{{Privilege: "SELECT", Table: "*"}}, Grants...), db, user)
}

func groupStatements(gs []Grant, db, user string) []string {
	var out []string
	for i := 0; i < len(gs); {
		j := i
		var privs []string
		for ; j < len(gs) && gs[j].Table == gs[i].Table; j++ {
			privs = append(privs, gs[j].Privilege)
		}
		out = append(out, statement(privs, db, gs[i].Table, user))
		i = j
	}
	return out
}

// readTables are the tables the bridge reads (SELECT ON vcl.* covers them).
var readTables = []string{
	"state", "computerloadstate", "managementnode", "request", "reservation", "reservationaccounts",
	"computer", "vmhost", "vmprofile", "image", "imagerevision", "imagemeta", "OS", "user",
	"computerloadlog",
}

// Grants are every privilege the bridge uses beyond SELECT on the database: the
// statements of docs/bridge.md ("Database account"), one privilege per line.
var Grants = []Grant{
	{"INSERT", "request", "stateid"}, // reclaim.pm's reload request
	{"UPDATE", "request", "stateid"}, // claims, results, expiry
	{"INSERT", "reservation", "requestid"},
	{"UPDATE", "reservation", "lastcheck"}, // lastcheck, pw
	{"UPDATE", "computer", "stateid"},
	{"UPDATE", "image", "size"},            // capture: size, name, deleted, lastupdate
	{"INSERT", "imagerevision", "imageid"}, // capture: a revision the web did not create
	{"UPDATE", "imagerevision", "deleted"}, // capture: deleted, datecreated
	{"UPDATE", "managementnode", "lastcheckin"},
	{"INSERT", "computerloadlog", "reservationid"},
	{"INSERT", "reservationaccounts", "reservationid"},
	{"UPDATE", "reservationaccounts", "password"}, // the web inserts (res, user, NULL) rows
	{"CREATE", "vclq_outbox", ""},
	{"INSERT", "vclq_outbox", "msg_id"},
	{"UPDATE", "vclq_outbox", "published"}, // entries an older bridge left unpublished
	{"DELETE", "vclq_outbox", ""},          // ids older than a day
	{"CREATE", "vclq_applied", ""},
	{"INSERT", "vclq_applied", "event_id"},
	{"DELETE", "vclq_applied", ""}, // the parking marker of a replayed event
}

// Account is the bridge's database account and database, as GRANT statements name
// them.
type Account struct {
	User     string // 'name'@'host'
	Database string
}

func currentAccount(ctx context.Context, db *sql.DB) (Account, error) {
	var user, dbName sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT CURRENT_USER(), DATABASE()").Scan(&user, &dbName); isDenied(err) {
		return Account{}, fmt.Errorf("%w: %w", ErrPrivileges, err)
	} else if err != nil {
		return Account{}, fmt.Errorf("read the current user: %w", err)
	}
	name, host, _ := strings.Cut(user.String, "@")
	return Account{User: "'" + name + "'@'" + host + "'", Database: dbName.String}, nil
}

// CheckPrivileges creates the bridge's own tables if they are missing and checks,
// with a dry run of each kind of statement the bridge runs (inside a transaction that
// is rolled back, every statement matching no row), that the account holds every
// privilege the bridge needs. A missing privilege returns an error wrapping
// ErrPrivileges with the GRANT statements that would add what is missing.
func CheckPrivileges(ctx context.Context, db *sql.DB) error {
	acct, err := currentAccount(ctx, db)
	if err != nil {
		return err
	}
	var missing []Grant
	var absent []string
	probe := func(tx *sql.Tx, g Grant, q string) error {
		if slices.Contains(absent, g.Table) {
			return nil
		}
		_, err := tx.ExecContext(ctx, q)
		var me *mysql.MySQLError
		switch {
		case err == nil:
		case isDenied(err):
			missing = append(missing, g)
		case errors.As(err, &me) && me.Number != 1146 && me.Number != 1054:
			// Refused after the privilege check (say 1364, no default for a column
			// the probe leaves out): the privilege is there.
		default:
			return schemaErr(fmt.Sprintf("check %s on %s", g.Privilege, g.Table), err)
		}
		return nil
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("check privileges: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // always rolled back: a dry run
	// VCL's tables first: a database that is not VCL's gets no table of the bridge.
	for _, t := range readTables {
		if err := probe(tx, Grant{Privilege: "SELECT", Table: t}, "SELECT 1 FROM `"+t+"` LIMIT 0"); err != nil {
			return err
		}
	}
	if err := tx.Rollback(); err != nil {
		return fmt.Errorf("check privileges: %w", err)
	}
	if absent, err = ensureTables(ctx, db); err != nil {
		return err
	}
	for _, g := range Grants {
		if slices.Contains(absent, g.Table) {
			missing = append(missing, g) // all of them, in one statement with CREATE
		}
	}
	if tx, err = db.BeginTx(ctx, nil); err != nil {
		return fmt.Errorf("check privileges: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // always rolled back: a dry run
	for _, t := range ownTableNames {
		if err := probe(tx, Grant{Privilege: "SELECT", Table: t}, "SELECT 1 FROM `"+t+"` LIMIT 0"); err != nil {
			return err
		}
	}
	for _, g := range Grants {
		var q string
		switch g.Privilege {
		case "INSERT":
			q = "INSERT INTO `" + g.Table + "` (`" + g.column + "`) SELECT NULL FROM DUAL WHERE FALSE"
		case "UPDATE":
			q = "UPDATE `" + g.Table + "` SET `" + g.column + "` = NULL WHERE FALSE"
		case "DELETE":
			q = "DELETE FROM `" + g.Table + "` WHERE FALSE"
		default:
			continue // CREATE: ensureTables
		}
		if err := probe(tx, g, q); err != nil {
			return err
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return privilegesErr(acct, missing)
}

func privilegesErr(acct Account, missing []Grant) error {
	// In Grants' order, one statement per table.
	var sorted []Grant
	for _, g := range append([]Grant{{Privilege: "SELECT", Table: "*"}}, Grants...) {
		if slices.ContainsFunc(missing, func(m Grant) bool {
			return m.Privilege == g.Privilege && (m.Table == g.Table || g.Table == "*" && m.Privilege == "SELECT")
		}) {
			sorted = append(sorted, g)
		}
	}
	lines := groupStatements(sorted, acct.Database, acct.User)
	for i := range lines {
		lines[i] = "    " + lines[i]
	}
	return fmt.Errorf("%w: %s lacks privileges on %s; run:\n%s",
		ErrPrivileges, acct.User, acct.Database, strings.Join(lines, "\n"))
}

// deniedErrors are the server's refusals of a statement, a login or a database.
var deniedErrors = []uint16{
	1044, // ER_DBACCESS_DENIED_ERROR
	1045, // ER_ACCESS_DENIED_ERROR
	1142, // ER_TABLEACCESS_DENIED_ERROR
	1143, // ER_COLUMNACCESS_DENIED_ERROR
	1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
	1370, // ER_PROCACCESS_DENIED_ERROR
	1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
	1449, // ER_NO_SUCH_USER (a definer)
}

// isDenied reports a permission or authentication error: never worth a retry.
func isDenied(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && slices.Contains(deniedErrors, me.Number)
}

// outageErrors are server errors of a database that is (going) away: retried with
// backoff for as long as the outage lasts. Deadlocks (1213) and lock wait timeouts
// (1205) are retried too, a bounded number of times per event.
var outageErrors = []uint16{
	1040, // ER_CON_COUNT_ERROR
	1053, // ER_SERVER_SHUTDOWN
	1927, // ER_CONNECTION_KILLED
	2006, // CR_SERVER_GONE_ERROR
	2013, // CR_SERVER_LOST
}

// fatal returns err wrapped with ErrPrivileges when the server refused the bridge (a
// permission or login error), with ErrSchema when the schema is wrong, and nil for
// anything that may pass on a retry (connections, deadlocks, NATS).
func fatal(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrPrivileges), errors.Is(err, ErrSchema):
		return err
	case isDenied(err):
		return fmt.Errorf("%w: %w (grant it, see docs/bridge.md, and restart the bridge)", ErrPrivileges, err)
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1146 || me.Number == 1054) {
		return fmt.Errorf("%w: %w", ErrSchema, err)
	}
	return nil
}
