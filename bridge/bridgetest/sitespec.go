package bridgetest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/vclq/vclq/messages"
)

// SiteSpec describes a fixture site whose ids and names the caller chooses, for tests
// that bridge a VCL database onto real flows: the rows must then match the simulated
// site (internal/devlab) the workers drive — host and slot names, addresses, MACs,
// datastore, image names and ids. LoadSiteSpec inserts it; use it instead of LoadSite.
type SiteSpec struct {
	ManagementNode ManagementNodeSpec
	Profile        ProfileSpec
	Hosts          []HostSpec
	Slots          []SlotSpec
	Images         []ImageSpec
	Users          []UserSpec
}

// ManagementNodeSpec is a managementnode row. IP is what guest firewalls always allow
// (the request's management node IP).
type ManagementNodeSpec struct {
	ID           int64
	Hostname, IP string
}

// ProfileSpec is the vmprofile every host uses.
type ProfileSpec struct {
	ID                             int64
	Name                           string
	DatastorePath, VMPath          string
	RepositoryPath                 string // "" for NULL (no repository)
	VirtualSwitch0, VirtualSwitch1 string
	VMDisk                         string // shared or dedicated
}

// HostSpec is an ESX host: its computer row (hostname = the worker's host name) and
// its vmhost row.
type HostSpec struct {
	ComputerID, VMHostID int64
	Hostname, IP         string
}

// SlotSpec is a VM computer on a vmhost. It starts available with VCL's noimage loaded
// (currentimageid/imagerevisionid NoImage).
type SlotSpec struct {
	ID, VMHostID                                    int64
	Hostname, PrivateIP, PublicIP, Eth0MAC, Eth1MAC string
	RAMMB, CPUs                                     int
	NextImage                                       int64 // computer.nextimageid; 0: noimage
}

// ImageSpec is an image with one revision.
type ImageSpec struct {
	ID                int64
	Name, PrettyName  string // image.name, image.prettyname (unique)
	OSType            string // messages.OSLinux or messages.OSWindows
	RevisionID        int64
	Revision          int
	ImageName         string // imagerevision.imagename: the datastore folder
	MinRAMMB, MinCPUs int
	Production        bool
}

// UserSpec is a user row. UID 0 is NULL; SSH keys set usepublickeys.
type UserSpec struct {
	ID      int64
	Login   string
	UID     int64
	SSHKeys []string
}

// NoImage is the id of VCL's placeholder image "noimage" (image and imagerevision 1),
// which a fresh computer carries.
const NoImage = 1

// OS ids LoadSiteSpec inserts for the image OS types.
const (
	OSLinuxID   = 200
	OSWindowsID = 201
)

// LoadSiteSpec inserts the site: noimage (where the schema lacks it), the OS rows,
// images, users, the management node, the vmprofile, the hosts and the slots.
func LoadSiteSpec(ctx context.Context, db *sql.DB, s SiteSpec) error {
	e := func(q string, args ...any) error {
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("%s: %w", strings.Join(strings.Fields(q), " "), err)
		}
		return nil
	}
	if err := e(`INSERT INTO image (id, name, prettyname, OSid, minram, minprocnumber)
		SELECT ?, 'noimage', 'No Image', 0, 0, 0 FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM image WHERE id = ?)`, NoImage, NoImage); err != nil {
		return err
	}
	if err := e(`INSERT INTO imagerevision (id, imageid, revision, userid, datecreated, deleted, production, imagename)
		SELECT ?, ?, 0, 1, '1980-01-01 00:00:00', 0, 1, 'noimage' FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM imagerevision WHERE id = ?)`, NoImage, NoImage, NoImage); err != nil {
		return err
	}
	if err := e(`INSERT INTO OS (id, name, prettyname, type, installtype) VALUES
		(?, 'vclqlinux', 'vclq Linux (VMware)', 'linux', 'vmware'), (?, 'vclqwin', 'vclq Windows (VMware)', 'windows', 'vmware')`,
		OSLinuxID, OSWindowsID); err != nil {
		return err
	}
	for _, u := range s.Users {
		if err := AddUser(ctx, db, u); err != nil {
			return err
		}
	}
	for _, im := range s.Images {
		if err := AddImage(ctx, db, im, 1); err != nil {
			return err
		}
	}
	mn := s.ManagementNode
	if err := e(`INSERT INTO managementnode (id, IPaddress, hostname, stateid, availablenetworks) VALUES (?, ?, ?, 2, '')`,
		mn.ID, mn.IP, mn.Hostname); err != nil {
		return err
	}
	p := s.Profile
	var repo any
	if p.RepositoryPath != "" {
		repo = p.RepositoryPath
	}
	if err := e(`INSERT INTO vmprofile (id, profilename, imageid, repositorypath, datastorepath, vmpath, virtualswitch0, virtualswitch1, vmdisk)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, p.ID, p.Name, NoImage, repo, p.DatastorePath, p.VMPath, p.VirtualSwitch0, p.VirtualSwitch1, p.VMDisk); err != nil {
		return err
	}
	for _, h := range s.Hosts {
		if err := e(`INSERT INTO computer (id, stateid, hostname, IPaddress, privateIPaddress, type, provisioningid, RAM, procnumber, currentimageid, nextimageid, imagerevisionid)
			VALUES (?, ?, ?, ?, ?, 'blade', 7, 65536, 16, ?, ?, ?)`,
			h.ComputerID, messages.StateIDs[messages.StateVMHostInUse], h.Hostname, h.IP, h.IP, NoImage, NoImage, NoImage); err != nil {
			return err
		}
		if err := e(`INSERT INTO vmhost (id, computerid, vmprofileid) VALUES (?, ?, ?)`, h.VMHostID, h.ComputerID, p.ID); err != nil {
			return err
		}
	}
	for _, c := range s.Slots {
		next := c.NextImage
		if next == 0 {
			next = NoImage
		}
		if err := e(`INSERT INTO computer (id, stateid, vmhostid, hostname, IPaddress, privateIPaddress, eth0macaddress, eth1macaddress, type, provisioningid, RAM, procnumber, currentimageid, nextimageid, imagerevisionid)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'virtualmachine', 7, ?, ?, ?, ?, ?)`,
			c.ID, messages.StateIDs[messages.StateAvailable], c.VMHostID, c.Hostname, c.PublicIP, c.PrivateIP, c.Eth0MAC, c.Eth1MAC,
			c.RAMMB, c.CPUs, NoImage, next, NoImage); err != nil {
			return err
		}
	}
	return nil
}

// AddUser inserts a user.
func AddUser(ctx context.Context, db *sql.DB, u UserSpec) error {
	var uid, keys any
	if u.UID != 0 {
		uid = u.UID
	}
	use := 0
	if len(u.SSHKeys) > 0 {
		use, keys = 1, strings.Join(u.SSHKeys, "\n")+"\n"
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO user (id, uid, unityid, email, usepublickeys, sshpublickeys) VALUES (?, ?, ?, ?, ?, ?)`,
		u.ID, uid, u.Login, u.Login+"@example.edu", use, keys); err != nil {
		return fmt.Errorf("insert user %s: %w", u.Login, err)
	}
	return nil
}

// AddImage inserts an image and its revision, owned (imagerevision.userid) by user:
// what VCL's web UI does when an image is created, before it is captured.
func AddImage(ctx context.Context, db *sql.DB, im ImageSpec, user int64) error {
	osID := OSLinuxID
	if im.OSType == messages.OSWindows {
		osID = OSWindowsID
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO image (id, name, prettyname, OSid, minram, minprocnumber) VALUES (?, ?, ?, ?, ?, ?)`,
		im.ID, im.Name, im.PrettyName, osID, im.MinRAMMB, im.MinCPUs); err != nil {
		return fmt.Errorf("insert image %s: %w", im.Name, err)
	}
	prod := 0
	if im.Production {
		prod = 1
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO imagerevision (id, imageid, revision, userid, datecreated, deleted, production, imagename) VALUES (?, ?, ?, ?, NOW(), 0, ?, ?)`,
		im.RevisionID, im.ID, im.Revision, user, prod, im.ImageName); err != nil {
		return fmt.Errorf("insert image revision %s: %w", im.ImageName, err)
	}
	return nil
}
