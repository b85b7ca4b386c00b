// Package bridgetest builds VCL databases for the bridge's tests, benchmarks and CLI
// tests: a fresh uniquely named MariaDB database loaded with vclq's minimal VCL schema
// (bridge/testdata/schema.sql) or Apache VCL's own vcl.sql (<repo>/../shared/vcl), and
// a fixture site (2 ESX hosts, 6 VM slots, images, users, 2 management nodes). It reads
// the schema files from the source tree, so it only works where the tree is.
package bridgetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/vclq/vclq/messages"
)

// Schemas: vclq's minimal one and Apache VCL's upstream vcl.sql.
const (
	SchemaOwn      = "own"
	SchemaUpstream = "upstream"
)

// ErrNoUpstream is returned when VCL's vcl.sql is not next to the repository.
var ErrNoUpstream = errors.New("upstream vcl.sql not found")

// Addr is the MariaDB to use (root, no password): $VCLQ_TEST_MYSQL_ADDR or
// 127.0.0.1:3306.
func Addr() string {
	if a := os.Getenv("VCLQ_TEST_MYSQL_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:3306"
}

// RootDSN is a DSN for root on Addr, database db ("" for none).
func RootDSN(db string, multiStatements bool) string {
	c := mysql.NewConfig()
	c.User, c.Net, c.Addr, c.DBName = "root", "tcp", Addr(), db
	c.MultiStatements = multiStatements
	c.Timeout = 3 * time.Second
	return c.FormatDSN()
}

// Reachable pings the server.
func Reachable(ctx context.Context) error {
	db, err := sql.Open("mysql", RootDSN("", false))
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return db.PingContext(ctx)
}

func sourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// SchemaPath is bridge/testdata/schema.sql in the source tree.
func SchemaPath() string { return filepath.Join(sourceDir(), "..", "testdata", "schema.sql") }

// UpstreamPath is <repo>/../shared/vcl/vcl.sql.
func UpstreamPath() string {
	return filepath.Join(sourceDir(), "..", "..", "..", "shared", "vcl", "vcl.sql")
}

// DB is a fresh database.
type DB struct {
	Name string
	// DSN is the bridge's DSN for it (bridge.DSN applied by the caller if wanted).
	DSN string
	SQL *sql.DB
}

// Drop removes the database and closes the connection.
func (d *DB) Drop() {
	d.SQL.Close()
	if a, err := sql.Open("mysql", RootDSN("", false)); err == nil {
		_, _ = a.Exec("DROP DATABASE IF EXISTS `" + d.Name + "`")
		a.Close()
	}
}

// Create makes a uniquely named database loaded with the schema. The caller drops it.
func Create(ctx context.Context, schema string) (*DB, error) {
	var ddl []byte
	var err error
	switch schema {
	case SchemaOwn:
		if ddl, err = os.ReadFile(SchemaPath()); err != nil {
			return nil, err
		}
	case SchemaUpstream:
		if ddl, err = os.ReadFile(UpstreamPath()); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoUpstream, err)
		}
		// Adding 147 foreign keys with checks on copies each table (15 s on a busy
		// machine); the keys are still created, and enforced on other connections.
		ddl = append([]byte("SET foreign_key_checks = 0;\n"), ddl...)
	default:
		return nil, fmt.Errorf("unknown schema %q", schema)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := "vclq_bridge_test_" + hex.EncodeToString(rnd[:])
	admin, err := sql.Open("mysql", RootDSN("", false))
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE `"+name+"` CHARACTER SET latin1"); err != nil {
		return nil, fmt.Errorf("create database: %w", err)
	}
	d := &DB{Name: name, DSN: RootDSN(name, false)}
	loader, err := sql.Open("mysql", RootDSN(name, true))
	if err == nil {
		_, err = loader.ExecContext(ctx, string(ddl))
		loader.Close()
	}
	if err == nil {
		d.SQL, err = sql.Open("mysql", d.DSN)
	}
	if err != nil {
		if d.SQL == nil {
			d.SQL, _ = sql.Open("mysql", d.DSN)
		}
		d.Drop()
		return nil, fmt.Errorf("load %s schema: %w", schema, err)
	}
	return d, nil
}

// Fixture ids.
const (
	MNOurs, MNOther                   = 100, 101
	HostA, HostB                      = 100, 101 // computer ids of the ESX hosts
	VMHostA, VMHostB                  = 100, 101
	ImgLinux, ImgWin, ImgCustom       = 100, 101, 102 // ImgCustom: the image a capture creates
	ImgSolaris                        = 103           // an OS vclq cannot provision
	RevLinux, RevWin, RevCustom       = 100, 101, 102
	RevSolaris                        = 103
	UserAlice, UserBob                = 100, 101
	UserCarol, UserDave               = 102, 103
	UserReload                        = 2 // vclreload
	FirstVM, LastVM             int64 = 110, 115
	AliceKey                          = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"
)

// LoadSite inserts the fixture site: management nodes 100 (192.0.2.1) and 101, users
// alice (with an SSH key), bob, carol, dave, images centos7 (linux), win10 (windows),
// centos7custom and solaris, one vmprofile, ESX hosts esx-01/esx-02 and VM slots
// vm-110..vm-115 (three per host), all available with centos7 loaded. extraVMs adds
// VM slots 116.. (for benchmarks), alternating between the hosts.
func LoadSite(ctx context.Context, db *sql.DB, extraVMs int) error {
	e := func(q string, args ...any) error {
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(strings.Fields(q), " "), err)
		}
		return nil
	}
	steps := []func() error{
		func() error {
			return e(`INSERT INTO managementnode (id, IPaddress, hostname, stateid, availablenetworks) VALUES
			(?, '192.0.2.1', 'mn1.vcl.example.edu', 2, ''), (?, '192.0.2.2', 'mn2.vcl.example.edu', 2, '')`, MNOurs, MNOther)
		},
		func() error {
			return e(`INSERT INTO user (id, uid, unityid, email, usepublickeys, sshpublickeys) VALUES
			(?, 20001, 'alice', 'alice@example.edu', 1, ?), (?, 20002, 'bob', 'bob@example.edu', 0, NULL),
			(?, 20003, 'carol', 'carol@example.edu', 0, NULL), (?, NULL, 'dave', 'dave@example.edu', 0, NULL)`,
				UserAlice, AliceKey+"\n", UserBob, UserCarol, UserDave)
		},
		func() error {
			return e(`INSERT INTO OS (id, name, prettyname, type, installtype) VALUES
			(200, 'vclqlinux', 'vclq Linux (VMware)', 'linux', 'vmware'),
			(201, 'vclqwin', 'vclq Windows (VMware)', 'windows', 'vmware'),
			(202, 'vclqsolaris', 'vclq Solaris (VMware)', 'unix', 'vmware')`)
		},
		func() error {
			return e(`INSERT INTO image (id, name, prettyname, OSid, minram, minprocnumber) VALUES
			(?, 'centos7', 'CentOS 7', 200, 1024, 1), (?, 'win10', 'Windows 10', 201, 2048, 2),
			(?, 'centos7custom', 'CentOS 7 custom', 200, 1024, 1), (?, 'solaris', 'Solaris', 202, 512, 1)`,
				ImgLinux, ImgWin, ImgCustom, ImgSolaris)
		},
		func() error {
			return e(`INSERT INTO imagerevision (id, imageid, revision, userid, datecreated, deleted, production, imagename) VALUES
			(?, ?, 1, 1, NOW(), 0, 1, 'vmwarelinux-centos7-v1'), (?, ?, 2, 1, NOW(), 0, 1, 'vmwarewin10-v2'),
			(?, ?, 0, 1, NOW(), 0, 1, 'vmwarelinux-centos7custom-v0'), (?, ?, 0, 1, NOW(), 0, 1, 'vmwaresolaris-v0')`,
				RevLinux, ImgLinux, RevWin, ImgWin, RevCustom, ImgCustom, RevSolaris, ImgSolaris)
		},
		func() error {
			return e(`INSERT INTO vmprofile (id, profilename, imageid, repositorypath, datastorepath, vmpath, virtualswitch0, virtualswitch1, vmdisk) VALUES
			(100, 'vclq test ESX', ?, '/vmfs/volumes/repo', '/vmfs/volumes/datastore1', '/vmfs/volumes/datastore1', 'VCL Private', 'VCL Public', 'shared')`, ImgLinux)
		},
		func() error {
			return e(`INSERT INTO computer (id, stateid, hostname, IPaddress, privateIPaddress, type, provisioningid, RAM, procnumber, currentimageid, nextimageid, imagerevisionid) VALUES
			(?, 20, 'esx-01.vcl.example.edu', '192.0.2.201', '192.0.2.201', 'blade', 7, 65536, 16, ?, ?, ?),
			(?, 20, 'esx-02.vcl.example.edu', '192.0.2.202', '192.0.2.202', 'blade', 7, 65536, 16, ?, ?, ?)`,
				HostA, ImgLinux, ImgLinux, RevLinux, HostB, ImgLinux, ImgLinux, RevLinux)
		},
		func() error {
			return e(`INSERT INTO vmhost (id, computerid, vmprofileid) VALUES (?, ?, 100), (?, ?, 100)`, VMHostA, HostA, VMHostB, HostB)
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	last := LastVM + int64(extraVMs)
	for id := FirstVM; id <= last; id++ {
		vh := VMHostA
		if id >= 113 && id <= LastVM || id > LastVM && id%2 == 1 {
			vh = VMHostB
		}
		if err := e(`INSERT INTO computer (id, stateid, vmhostid, hostname, IPaddress, privateIPaddress, eth0macaddress, eth1macaddress, type, provisioningid, RAM, procnumber, currentimageid, nextimageid, imagerevisionid)
			VALUES (?, 2, ?, ?, ?, ?, ?, ?, 'virtualmachine', 7, 2048, 2, ?, ?, ?)`,
			id, vh, fmt.Sprintf("vm-%d.vcl.example.edu", id), publicIP(id), privateIP(id),
			fmt.Sprintf("00:50:56:00:%02x:%02x", id>>8, id&0xff), fmt.Sprintf("00:50:56:01:%02x:%02x", id>>8, id&0xff), ImgLinux, ImgLinux, RevLinux); err != nil {
			return err
		}
	}
	return nil
}

// Req describes a request to insert.
type Req struct {
	State, Last string // Last defaults to State
	Computer    int64
	Rev         int64         // image revision (default RevLinux); its image is looked up
	User        int64         // default UserAlice
	Start       time.Duration // from NOW()
	RemoteIP    string
	MN          int64   // default MNOurs
	Accounts    []int64 // reservationaccounts
}

// AddRequest inserts a request and its reservation and returns their ids.
func AddRequest(ctx context.Context, db *sql.DB, r Req) (requestID, reservationID int64, err error) {
	if r.Last == "" {
		r.Last = r.State
	}
	if r.Rev == 0 {
		r.Rev = RevLinux
	}
	if r.User == 0 {
		r.User = UserAlice
	}
	if r.MN == 0 {
		r.MN = MNOurs
	}
	res, err := db.ExecContext(ctx, `INSERT INTO request (stateid, userid, laststateid, start, end, daterequested, datemodified)
		VALUES (?, ?, ?, NOW() + INTERVAL ? SECOND, NOW() + INTERVAL ? SECOND, NOW(), NOW())`,
		messages.StateIDs[r.State], r.User, messages.StateIDs[r.Last], int64(r.Start/time.Second), int64((r.Start+2*time.Hour)/time.Second))
	if err != nil {
		return 0, 0, fmt.Errorf("insert request: %w", err)
	}
	requestID, _ = res.LastInsertId()
	var remote any
	if r.RemoteIP != "" {
		remote = r.RemoteIP
	}
	res, err = db.ExecContext(ctx, `INSERT INTO reservation (requestid, computerid, imageid, imagerevisionid, managementnodeid, remoteIP)
		SELECT ?, ?, imageid, id, ?, ? FROM imagerevision WHERE id = ?`, requestID, r.Computer, r.MN, remote, r.Rev)
	if err != nil {
		return 0, 0, fmt.Errorf("insert reservation: %w", err)
	}
	reservationID, _ = res.LastInsertId()
	for _, u := range r.Accounts {
		if _, err := db.ExecContext(ctx, "INSERT INTO reservationaccounts (reservationid, userid) VALUES (?, ?)", reservationID, u); err != nil {
			return 0, 0, fmt.Errorf("insert reservationaccounts: %w", err)
		}
	}
	return requestID, reservationID, nil
}

func privateIP(id int64) string {
	if id < 255 {
		return fmt.Sprintf("192.0.2.%d", id)
	}
	return fmt.Sprintf("10.0.%d.%d", id>>8, id&0xff)
}

func publicIP(id int64) string {
	if id < 255 {
		return fmt.Sprintf("198.51.100.%d", id)
	}
	return fmt.Sprintf("10.1.%d.%d", id>>8, id&0xff)
}
