package bridgetest

import (
	"context"
	"database/sql"
	"fmt"
)

// RequestState is "state/laststate" of a request, by VCL's state names.
func RequestState(ctx context.Context, db *sql.DB, id int64) (string, error) {
	var st, last string
	err := db.QueryRowContext(ctx, `SELECT s.name, l.name FROM request r JOIN state s ON s.id = r.stateid
		JOIN state l ON l.id = r.laststateid WHERE r.id = ?`, id).Scan(&st, &last)
	if err != nil {
		return "", fmt.Errorf("request %d state: %w", id, err)
	}
	return st + "/" + last, nil
}

// ComputerState is a computer's state name.
func ComputerState(ctx context.Context, db *sql.DB, id int64) (string, error) {
	var st string
	err := db.QueryRowContext(ctx, `SELECT s.name FROM computer c JOIN state s ON s.id = c.stateid WHERE c.id = ?`, id).Scan(&st)
	if err != nil {
		return "", fmt.Errorf("computer %d state: %w", id, err)
	}
	return st, nil
}
