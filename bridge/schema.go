package bridge

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/vclq/vclq/messages"
)

// The bridge's own tables, created by EnsureTables next to VCL's. vclq_outbox holds
// claimed requests until JetStream acknowledged them (published NULL), then for a day
// as the history of the message ids used; vclq_applied holds the id of every event
// applied to the database, written in the same transaction as the change.
var ownTables = []string{
	"CREATE TABLE IF NOT EXISTS `vclq_outbox` (" +
		"`seq` bigint unsigned NOT NULL AUTO_INCREMENT," +
		"`msg_id` varchar(191) NOT NULL," +
		"`subject` varchar(64) NOT NULL," +
		"`payload` mediumblob NOT NULL," +
		"`request_id` bigint unsigned NOT NULL," +
		"`reservation_id` bigint unsigned NOT NULL," +
		"`created` datetime NOT NULL," +
		"`published` datetime NULL DEFAULT NULL," +
		"PRIMARY KEY (`seq`), UNIQUE KEY `msg_id` (`msg_id`), KEY `published` (`published`)" +
		") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
	"CREATE TABLE IF NOT EXISTS `vclq_applied` (" +
		"`event_id` varchar(191) NOT NULL," +
		"`stream_seq` bigint unsigned NOT NULL DEFAULT 0," +
		"`reservation_id` bigint unsigned NOT NULL DEFAULT 0," +
		"`applied` datetime NOT NULL," +
		"PRIMARY KEY (`event_id`), KEY `reservation_id` (`reservation_id`)" +
		") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
}

// EnsureTables creates the bridge's own tables if they are missing. It never touches
// VCL's tables.
func EnsureTables(ctx context.Context, db *sql.DB) error {
	absent, err := ensureTables(ctx, db)
	if err != nil {
		return err
	}
	if len(absent) > 0 {
		acct, err := currentAccount(ctx, db)
		if err != nil {
			return err
		}
		var missing []Grant
		for _, g := range Grants {
			if slices.Contains(absent, g.Table) {
				missing = append(missing, g)
			}
		}
		return privilegesErr(acct, missing)
	}
	return nil
}

// ownTableNames are the tables of ownTables, in order.
var ownTableNames = []string{"vclq_outbox", "vclq_applied"}

// ensureTables creates those of the bridge's tables that do not exist yet (an existing
// one needs no CREATE privilege) and returns those it was not allowed to create.
func ensureTables(ctx context.Context, db *sql.DB) (absent []string, err error) {
	for i, q := range ownTables {
		name := ownTableNames[i]
		var n int
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", name).Scan(&n); err != nil {
			return nil, fmt.Errorf("look for bridge table %s: %w", name, err)
		}
		if n > 0 {
			continue
		}
		if _, err := db.ExecContext(ctx, q); isDenied(err) {
			absent = append(absent, name)
		} else if err != nil {
			return nil, fmt.Errorf("create bridge table %s: %w", name, err)
		}
	}
	return absent, nil
}

// requiredLoadstates must exist in computerloadstate: the bridge writes them itself.
var requiredLoadstates = []string{
	messages.LoadBegin, messages.LoadInfo, messages.LoadExited, messages.LoadFailed, messages.LoadWarning,
}

// requiredStates must exist in state: the bridge claims, fails and exits with them.
var requiredStates = append([]string{messages.StatePending, messages.StateFailed, messages.StateInUse}, polledStates...)

// names maps VCL names to ids both ways.
type names struct {
	id   map[string]int
	name map[int]string
}

func loadNames(ctx context.Context, db *sql.DB, query string, required []string, what string) (names, error) {
	n := names{id: map[string]int{}, name: map[int]string{}}
	rows, err := db.QueryContext(ctx, query)
	if err != nil {
		return n, schemaErr(fmt.Sprintf("read %s", what), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			return n, schemaErr(fmt.Sprintf("read %s", what), err)
		}
		n.id[name] = id
		n.name[id] = name
	}
	if err := rows.Err(); err != nil {
		return n, schemaErr(fmt.Sprintf("read %s", what), err)
	}
	for _, r := range required {
		if _, ok := n.id[r]; !ok {
			return n, fmt.Errorf("%w: %s %q is missing", ErrSchema, what, r)
		}
	}
	return n, nil
}

// schemaErr wraps ErrSchema around errors that say the schema is wrong (a missing
// table or column, a type mismatch), and leaves the others (connection) retryable.
func schemaErr(what string, err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1146 || me.Number == 1054 || me.Number == 1049) {
		return fmt.Errorf("%w: %s: %w", ErrSchema, what, err)
	}
	if errors.Is(err, sql.ErrNoRows) || strings.Contains(err.Error(), "converting") {
		return fmt.Errorf("%w: %s: %w", ErrSchema, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
