package bridgetest

import (
	"bufio"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// DocsPath is docs/bridge.md in the source tree.
func DocsPath() string { return filepath.Join(sourceDir(), "..", "..", "docs", "bridge.md") }

// DocumentedGrants returns the GRANT statements of docs/bridge.md (database `vcl`,
// user 'vclq'@'%'), in order, as an operator pastes them.
func DocumentedGrants() ([]string, error) {
	f, err := os.Open(DocsPath())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// The statements to paste start their line; indented ones are examples.
		if l := strings.TrimRight(sc.Text(), " "); strings.HasPrefix(l, "GRANT ") && strings.HasSuffix(l, "TO 'vclq'@'%';") {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no GRANT statement", DocsPath())
	}
	return out, sc.Err()
}

// User is a database account made for a test.
type User struct {
	Name string // without host
	// Quoted is 'name'@'%'.
	Quoted string
	// DSN logs in as the user to the database it was made for.
	DSN string
}

// CreateUser creates a uniquely named user 'vclq_t_…'@'%' with a password and gives
// it grants: documented GRANT statements, with database `vcl` replaced by dbName and
// 'vclq'@'%' by the user. drop removes the user.
func CreateUser(ctx context.Context, dbName string, grants []string) (u User, drop func(), err error) {
	var rnd [5]byte
	_, _ = rand.Read(rnd[:])
	u.Name = "vclq_t_" + hex.EncodeToString(rnd[:])
	u.Quoted = "'" + u.Name + "'@'%'"
	pass := hex.EncodeToString(rnd[:]) + "-pw"
	admin, err := sql.Open("mysql", RootDSN("", false))
	if err != nil {
		return u, nil, err
	}
	drop = func() {
		_, _ = admin.Exec("DROP USER IF EXISTS " + u.Quoted)
		admin.Close()
	}
	if _, err := admin.ExecContext(ctx, "CREATE USER "+u.Quoted+" IDENTIFIED BY '"+pass+"'"); err != nil {
		drop()
		return u, nil, fmt.Errorf("create user: %w", err)
	}
	for _, g := range grants {
		g = strings.ReplaceAll(g, "`vcl`.", "`"+dbName+"`.")
		g = strings.ReplaceAll(g, "'vclq'@'%'", u.Quoted)
		if _, err := admin.ExecContext(ctx, g); err != nil {
			drop()
			return u, nil, fmt.Errorf("%s: %w", g, err)
		}
	}
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr, c.DBName = u.Name, pass, "tcp", Addr(), dbName
	c.Timeout = 3 * time.Second
	u.DSN = c.FormatDSN()
	return u, drop, nil
}

// Grant replaces the documented database and user in a GRANT statement with dbName
// and u, as CreateUser does.
func (u User) Grant(stmt, dbName string) string {
	stmt = strings.ReplaceAll(stmt, "`vcl`.", "`"+dbName+"`.")
	return strings.ReplaceAll(stmt, "'vclq'@'%'", u.Quoted)
}
