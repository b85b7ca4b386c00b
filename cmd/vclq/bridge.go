package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql" // also the database/sql driver "mysql"
	"github.com/rs/zerolog"

	"github.com/vclq/vclq/bridge"
	"github.com/vclq/vclq/internal/natsconn"
	"github.com/vclq/vclq/internal/wait"
	"github.com/vclq/vclq/streams"
)

// runBridge is `vclq bridge`: a legacy VCL site's database ⇄ NATS (package bridge).
func runBridge(ctx context.Context, e *env, args []string) int {
	var (
		nc       natsconn.Config
		cfg      bridge.Config
		dsn      = os.Getenv("VCLQ_BRIDGE_MYSQL")
		mns      = managementNodesEnv()
		sealKey  = os.Getenv("VCLQ_SEAL_KEY")
		keygen   string
		noEnsure bool
		replicas int
		startup  time.Duration
		metAddr  = os.Getenv("VCLQ_METRICS_ADDR")
	)
	fs := flagSet(e, "bridge", "--mysql DSN --management-node ID[,ID] [--seal-key FILE] [flags]")
	nc.RegisterFlags(fs)
	fs.StringVar(&dsn, "mysql", dsn, "VCL database, go-sql-driver DSN user:pass@tcp(host:3306)/vcl ($VCLQ_BRIDGE_MYSQL; prefer the variable: flags show in ps)")
	fs.StringVar(&mns, "management-node", mns, "managementnode id(s) this bridge serves, comma separated ($VCLQ_MANAGEMENT_NODES)")
	fs.DurationVar(&cfg.Interval, "interval", bridge.DefaultInterval, "poll interval (vcld's check-in interval)")
	fs.DurationVar(&cfg.Preload, "preload", bridge.DefaultPreload, "publish new and reload requests this long before their start")
	fs.IntVar(&cfg.PollLimit, "poll-limit", bridge.DefaultPollLimit, "rows read per poll")
	fs.DurationVar(&cfg.EventAckWait, "event-ack-wait", 30*time.Second, "AckWait of the bridge's event consumer")
	fs.StringVar(&sealKey, "seal-key", sealKey, "file with the bridge's private seal key (base64): opens users' passwords for reservation.pw ($VCLQ_SEAL_KEY)")
	fs.StringVar(&keygen, "seal-keygen", "", "write a new private seal key to this file (mode 0600) and its public key to FILE.pub (the workers' flow.seal_public_key_file), print the public key, and exit")
	fs.BoolVar(&noEnsure, "no-ensure", false, "do not create missing streams, consumers and buckets at start")
	fs.IntVar(&replicas, "replicas", 0, "replicas of streams and buckets created at start if missing (default 1; existing ones are left as they are: vclq nats init changes them)")
	fs.StringVar(&metAddr, "metrics-addr", metAddr, "serve /metrics, /healthz and /readyz on this address, e.g. 127.0.0.1:9465 ($VCLQ_METRICS_ADDR; default off)")
	fs.DurationVar(&startup, "startup-timeout", 2*time.Minute, "how long start-up waits for the database and for NATS before it exits (the service manager restarts it)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "vclq bridge: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if keygen != "" {
		return sealKeygen(e, keygen)
	}
	if dsn == "" || mns == "" {
		fmt.Fprintln(e.stderr, "vclq bridge: --mysql and --management-node are required")
		fs.Usage()
		return exitUsage
	}
	for _, f := range strings.Split(mns, ",") {
		id, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
		if err != nil || id <= 0 {
			fmt.Fprintf(e.stderr, "vclq bridge: --management-node: %q is not a positive id\n", f)
			return exitUsage
		}
		cfg.ManagementNodes = append(cfg.ManagementNodes, id)
	}
	if sealKey != "" {
		k, err := bridge.LoadSealKey(sealKey)
		if err != nil {
			fmt.Fprintln(e.stderr, "vclq bridge:", err)
			return exitUsage
		}
		cfg.SealKey = k
	} else {
		e.log.Warn().Msg("bridge: no --seal-key: users' passwords from workers cannot be stored in reservation.pw")
	}
	full, err := bridge.DSN(dsn)
	if err != nil {
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		return exitUsage
	}
	db, err := sql.Open("mysql", full)
	if err != nil {
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		return exitUsage
	}
	defer db.Close()
	db.SetMaxOpenConns(8)
	db.SetConnMaxLifetime(5 * time.Minute)

	if startup <= 0 {
		fmt.Fprintln(e.stderr, "vclq bridge: --startup-timeout must be positive")
		return exitUsage
	}
	if nc.Name == "" {
		nc.Name = "vclq-bridge"
	}
	log := e.log.With().Str("component", "bridge").Logger()
	tel := newTelemetry(metAddr, log)
	if cfg.Metrics, err = tel.bridge(); err == nil {
		err = tel.start(ctx)
	}
	if err != nil {
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		return exitFailure
	}
	defer tel.close()
	// The database login first: a bridge that cannot work must not touch NATS.
	if err := waitForDatabase(ctx, db, startup, log.With().Str("mysql", bridge.RedactDSN(dsn)).Logger()); err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		if errors.Is(err, errDatabaseLogin) {
			return exitUsage
		}
		return exitFailure
	}
	// Then every privilege the bridge needs, before anything is claimed.
	if err := bridge.CheckPrivileges(ctx, db); err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		if errors.Is(err, bridge.ErrPrivileges) || errors.Is(err, bridge.ErrSchema) {
			return exitUsage
		}
		return exitFailure
	}
	var b *bridge.Bridge
	// Then NATS: converge (create what is missing, change nothing), then the bridge's
	// own checks of the database (schema, management nodes). A NATS or database that
	// is not there yet is waited out within --startup-timeout; a configuration error
	// stops it at once.
	err = wait.Until(ctx, startup, 2*time.Second, func(wctx context.Context) (bool, error) {
		conn, js, err := natsconn.Connect(nc, log)
		if err != nil {
			log.Warn().Err(err).Msg("bridge: NATS not reachable yet")
			return false, err
		}
		if !noEnsure {
			if err := convergeStreams(wctx, js, streams.Options{Replicas: replicas}, log); err != nil {
				conn.Close()
				log.Warn().Err(err).Msg("bridge: ensure streams")
				return false, err
			}
		}
		b, err = bridge.New(wctx, db, js, cfg, log)
		if errors.Is(err, bridge.ErrConfig) || errors.Is(err, bridge.ErrSchema) || errors.Is(err, bridge.ErrPrivileges) {
			conn.Close()
			return false, wait.Permanent(err)
		}
		if err != nil {
			conn.Close()
			log.Warn().Err(err).Str("mysql", bridge.RedactDSN(dsn)).Msg("bridge: database not ready yet")
			return false, err
		}
		context.AfterFunc(ctx, conn.Close)
		return true, nil
	})
	if ctx.Err() != nil {
		return exitOK
	}
	if errors.Is(err, bridge.ErrConfig) || errors.Is(err, bridge.ErrSchema) || errors.Is(err, bridge.ErrPrivileges) {
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		return exitUsage
	}
	if err != nil {
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		return exitFailure
	}
	tel.setChecks(b.HealthChecks())
	log.Info().Str("mysql", bridge.RedactDSN(dsn)).Ints64("management_nodes", cfg.ManagementNodes).
		Dur("interval", cfg.Interval).Bool("seal_key", cfg.SealKey != nil).Msg("bridge started")
	if err := b.Run(ctx); err != nil {
		log.Error().Err(err).Msg("bridge")
		fmt.Fprintln(e.stderr, "vclq bridge:", err)
		// A refused statement, login or database, or a wrong schema: a restart does not
		// help (systemd: RestartPreventExitStatus=2).
		if errors.Is(err, bridge.ErrPrivileges) || errors.Is(err, bridge.ErrSchema) {
			return exitUsage
		}
		return exitFailure
	}
	return exitOK
}

// managementNodesEnv is $VCLQ_MANAGEMENT_NODES, or the older singular
// $VCLQ_MANAGEMENT_NODE when that is unset.
func managementNodesEnv() string {
	if v := os.Getenv("VCLQ_MANAGEMENT_NODES"); v != "" {
		return v
	}
	return os.Getenv("VCLQ_MANAGEMENT_NODE")
}

func sealKeygen(e *env, path string) int {
	k, err := bridge.NewSealKey(nil)
	if err != nil {
		return fail(e, "bridge: %v", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(e, "bridge: seal key: %v", err)
	}
	if _, err := f.Write(k.MarshalPrivate()); err != nil {
		f.Close()
		return fail(e, "bridge: seal key: %v", err)
	}
	if err := f.Close(); err != nil {
		return fail(e, "bridge: seal key: %v", err)
	}
	if err := os.WriteFile(path+".pub", []byte(k.PublicKeyBase64()+"\n"), 0o644); err != nil {
		return fail(e, "bridge: seal public key: %v", err)
	}
	fmt.Fprintln(e.stdout, k.PublicKeyBase64())
	return exitOK
}

// errDatabaseLogin is wrapped when the database refuses the bridge's login or
// database: a configuration error, not something to wait out.
var errDatabaseLogin = errors.New("database login refused")

// Server errors that refuse a login or its database.
var loginRefused = []uint16{
	1044, // ER_DBACCESS_DENIED_ERROR
	1045, // ER_ACCESS_DENIED_ERROR
	1049, // ER_BAD_DB_ERROR
	1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
}

// waitForDatabase logs in to the database and runs a query, waiting out a database
// that is not reachable yet for at most timeout; a refused login fails at once
// (errDatabaseLogin).
func waitForDatabase(ctx context.Context, db *sql.DB, timeout time.Duration, log zerolog.Logger) error {
	err := wait.Until(ctx, timeout, 2*time.Second, func(ctx context.Context) (bool, error) {
		err := pingDatabase(ctx, db)
		var me *mysql.MySQLError
		if errors.As(err, &me) && slices.Contains(loginRefused, me.Number) {
			return false, wait.Permanent(fmt.Errorf("%w: %w", errDatabaseLogin, err))
		}
		if err != nil {
			log.Warn().Err(err).Msg("bridge: database not reachable yet")
			return false, err
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

// pingDatabase opens a connection and runs a query on it, each bounded.
func pingDatabase(ctx context.Context, db *sql.DB) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		return err
	}
	var one int
	if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("query: %w", err)
	}
	return nil
}
