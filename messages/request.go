package messages

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Request is one reservation state to process, as published on vcl.<kind>. Its groups
// mirror vcld's DataStructure. It carries no credential of any kind.
type Request struct {
	Schema      int             `json:"schema"`
	Kind        Kind            `json:"kind"`
	Request     RequestInfo     `json:"request"`
	Reservation ReservationInfo `json:"reservation"`
	Computer    Computer        `json:"computer"`
	VMHost      VMHost          `json:"vmhost"`
	Image       Image           `json:"image"`
	// Users to create (new on Windows, reserved on Linux) or remove (reclaim).
	Users []User `json:"users,omitempty"`
	// RemoteIP is the user's address once they clicked Connect (kind reserved).
	RemoteIP string `json:"remote_ip,omitempty"`
	// TargetImage is the image a capture creates (kind image).
	TargetImage *TargetImage `json:"target_image,omitempty"`
	// NextImage is what a reclaim that must reload puts on the slot (computer.nextimageid);
	// the reservation's image when absent.
	NextImage *Image `json:"next_image,omitempty"`
	// ManagementNode is the address the guest firewall always allows (post-load).
	ManagementNodeIP string `json:"management_node_ip,omitempty"`
}

// RequestInfo is the VCL request row.
type RequestInfo struct {
	ID        int64     `json:"id"`
	State     string    `json:"state"`
	LastState string    `json:"laststate,omitempty"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end"`
	// Modified is request.datemodified; with the state and reservation id it makes the
	// publish's Nats-Msg-Id.
	Modified time.Time `json:"modified,omitzero"`
}

// ReservationInfo is the VCL reservation row.
type ReservationInfo struct {
	ID int64 `json:"id"`
}

// Computer is the VM slot.
type Computer struct {
	ID        int64  `json:"id"`
	Hostname  string `json:"hostname"`
	ShortName string `json:"short_name"`
	PrivateIP string `json:"private_ip"`
	PublicIP  string `json:"public_ip,omitempty"`
	Eth0MAC   string `json:"eth0_mac,omitempty"`
	Eth1MAC   string `json:"eth1_mac,omitempty"`
	RAMMB     int    `json:"ram_mb"`
	CPUs      int    `json:"cpus"`
}

// VMHost is the ESX host the slot lives on.
type VMHost struct {
	ID       int64     `json:"id"`
	Hostname string    `json:"hostname"`
	Profile  VMProfile `json:"profile"`
}

// VMDisk modes of a vmprofile.
const (
	VMDiskShared    = "shared"
	VMDiskDedicated = "dedicated"
)

// VMProfile is the vmprofile row (less its credentials, which are worker configuration).
type VMProfile struct {
	DatastorePath  string `json:"datastore_path"`
	VMPath         string `json:"vm_path,omitempty"`
	RepositoryPath string `json:"repository_path,omitempty"`
	VirtualSwitch0 string `json:"virtual_switch0"`
	VirtualSwitch1 string `json:"virtual_switch1,omitempty"`
	VirtualSwitch2 string `json:"virtual_switch2,omitempty"`
	VirtualSwitch3 string `json:"virtual_switch3,omitempty"`
	VMDisk         string `json:"vmdisk"`
}

// OS types.
const (
	OSLinux   = "linux"
	OSWindows = "windows"
)

// Image is an image revision to load.
type Image struct {
	ID         int64  `json:"id"`
	Name       string `json:"name"` // imagerevision.imagename
	RevisionID int64  `json:"revision_id"`
	Revision   int    `json:"revision"`
	OSType     string `json:"os_type"`
	OSName     string `json:"os_name,omitempty"`
	MinRAMMB   int    `json:"min_ram_mb,omitempty"`
	MinCPUs    int    `json:"min_cpus,omitempty"`
}

// User is a reservation user.
type User struct {
	ID         int64    `json:"id"`
	Login      string   `json:"login"`
	UID        int64    `json:"uid,omitempty"`
	SSHKeys    []string `json:"ssh_keys,omitempty"`
	RootAccess bool     `json:"root_access,omitempty"`
}

// TargetImage is the image a capture creates.
type TargetImage struct {
	ImageID    int64  `json:"image_id"`
	Name       string `json:"name"`
	RevisionID int64  `json:"revision_id"`
	Revision   int    `json:"revision"`
}

// KindStates lists, per kind, the VCL request states a request of that kind may carry
// in request.state (VCL_REFERENCE.md §2: new.pm handles new, reload, reinstall and
// tomaintenance; reclaim.pm timeout and deleted; image.pm image and checkpoint).
var KindStates = map[Kind][]string{
	KindNew:      {StateNew, StateReinstall, StateToMaintenance},
	KindReload:   {StateReload, StateReinstall, StateToMaintenance},
	KindReclaim:  {StateTimeout, StateDeleted},
	KindImage:    {StateImage, StateCheckpoint},
	KindReserved: {StateReserved},
}

// Bounds on numbers.
const (
	maxID    = 1<<53 - 1
	maxRAMMB = 16 << 20 // 16 TiB
	maxCPUs  = 768
	minUID   = 1000
	maxUID   = 1<<31 - 2
)

// MsgID is the Nats-Msg-Id a publisher sets on the request: state, reservation id and
// request modification time, so that a row re-published unchanged is not queued twice.
// A request without modified time gets 0 there (time.Time{}.UnixNano is undefined).
func (r *Request) MsgID() string {
	var mod int64
	if !r.Request.Modified.IsZero() {
		mod = r.Request.Modified.UnixNano()
	}
	return fmt.Sprintf("%s-%d-%d", r.Kind, r.Reservation.ID, mod)
}

// Validate checks every field against its pattern and the kind's required fields. It
// returns all problems joined, each wrapping ErrInvalid.
func (r *Request) Validate() error {
	var v validator
	if r.Schema != SchemaVersion {
		v.addf("schema: version %d is not supported (want %d)", r.Schema, SchemaVersion)
	}
	if !r.Kind.Valid() {
		v.addf("kind: %q is not one of new, reload, reclaim, image, reserved", r.Kind)
	}
	v.id("request.id", r.Request.ID)
	if !ValidState(r.Request.State) {
		v.addf("request.state: %q is not a VCL state", r.Request.State)
	} else if states, ok := KindStates[r.Kind]; ok && !slices.Contains(states, r.Request.State) {
		v.addf("request.state: %q is not handled by kind %s (%s)", r.Request.State, r.Kind, strings.Join(states, ", "))
	}
	if r.Request.LastState != "" && !ValidState(r.Request.LastState) {
		v.addf("request.laststate: %q is not a VCL state", r.Request.LastState)
	}
	if r.Request.Start.IsZero() || r.Request.End.IsZero() {
		v.addf("request.start and request.end are required")
	} else if r.Kind != KindReclaim && !r.Request.End.After(r.Request.Start) {
		// A reclaim tears down whatever is left: VCL's web UI sets end to NOW() on an
		// early delete, which can equal start (or precede it once clocks are rounded),
		// and refusing that would leave the VM in use.
		v.addf("request.end %s is not after request.start %s", r.Request.End.Format(time.RFC3339), r.Request.Start.Format(time.RFC3339))
	}
	v.id("reservation.id", r.Reservation.ID)

	c := r.Computer
	v.id("computer.id", c.ID)
	v.check("computer.hostname", ValidHostname(c.Hostname))
	v.check("computer.short_name", ValidShortName(c.ShortName))
	if c.ShortName != ShortName(c.Hostname) {
		v.addf("computer.short_name: %q is not the hostname %q up to its first dot", c.ShortName, c.Hostname)
	}
	v.check("computer.private_ip", ValidIP(c.PrivateIP))
	v.optional("computer.public_ip", c.PublicIP, ValidIP)
	v.optional("computer.eth0_mac", c.Eth0MAC, ValidMAC)
	v.optional("computer.eth1_mac", c.Eth1MAC, ValidMAC)
	v.rangeInt("computer.ram_mb", int64(c.RAMMB), 1, maxRAMMB)
	v.rangeInt("computer.cpus", int64(c.CPUs), 1, maxCPUs)

	h := r.VMHost
	v.id("vmhost.id", h.ID)
	v.check("vmhost.hostname", ValidHostname(h.Hostname))
	p := h.Profile
	v.check("vmhost.profile.datastore_path", ValidDatastorePath(p.DatastorePath))
	v.optional("vmhost.profile.vm_path", p.VMPath, ValidDatastorePath)
	v.optional("vmhost.profile.repository_path", p.RepositoryPath, ValidDatastorePath)
	v.check("vmhost.profile.virtual_switch0", ValidSwitchName(p.VirtualSwitch0))
	v.optional("vmhost.profile.virtual_switch1", p.VirtualSwitch1, ValidSwitchName)
	v.optional("vmhost.profile.virtual_switch2", p.VirtualSwitch2, ValidSwitchName)
	v.optional("vmhost.profile.virtual_switch3", p.VirtualSwitch3, ValidSwitchName)
	if p.VMDisk != VMDiskShared && p.VMDisk != VMDiskDedicated {
		v.addf("vmhost.profile.vmdisk: %q is not shared or dedicated", p.VMDisk)
	}

	v.image("image", r.Image)
	if r.NextImage != nil {
		v.image("next_image", *r.NextImage)
	}
	if len(r.Users) > MaxUsers {
		v.addf("users: %d users, more than %d", len(r.Users), MaxUsers)
	}
	seen, seenUID, seenID := map[string]bool{}, map[int64]bool{}, map[int64]bool{}
	for i, u := range r.Users {
		f := fmt.Sprintf("users[%d]", i)
		v.id(f+".id", u.ID)
		v.check(f+".login", ValidUsername(u.Login))
		if seen[u.Login] {
			v.addf("%s.login: %q appears twice", f, u.Login)
		}
		seen[u.Login] = true
		if ReservedLogin(u.Login) {
			v.addf("%s.login: %q is a reserved account", f, u.Login)
		}
		if u.UID != 0 {
			v.rangeInt(f+".uid", u.UID, minUID, maxUID)
			if seenUID[u.UID] {
				v.addf("%s.uid: %d appears twice", f, u.UID)
			}
			seenUID[u.UID] = true
		}
		if seenID[u.ID] {
			v.addf("%s.id: %d appears twice", f, u.ID)
		}
		seenID[u.ID] = true
		if len(u.SSHKeys) > MaxSSHKeys {
			v.addf("%s.ssh_keys: %d keys, more than %d", f, len(u.SSHKeys), MaxSSHKeys)
		}
		for j, k := range u.SSHKeys {
			v.check(fmt.Sprintf("%s.ssh_keys[%d]", f, j), ValidSSHPublicKey(k))
		}
	}
	v.optional("remote_ip", r.RemoteIP, ValidIP)
	v.optional("management_node_ip", r.ManagementNodeIP, ValidIP)

	switch r.Kind {
	case KindReserved:
		if r.RemoteIP == "" {
			v.addf("remote_ip: required for a reserved request")
		}
		if len(r.Users) == 0 {
			v.addf("users: a reserved request needs at least one user")
		}
	case KindImage:
		if r.TargetImage == nil {
			v.addf("target_image: required for an image request")
		} else {
			t := r.TargetImage
			v.targetImage("target_image", *t)
			if t.Name == r.Image.Name {
				v.addf("target_image.name: %q is the image being captured", t.Name)
			}
		}
	}
	if r.Kind != KindImage && r.TargetImage != nil {
		v.addf("target_image: only an image request has one")
	}
	return v.err()
}

// validator collects a message's problems; err joins them into one invalidError.
type validator struct{ problems []string }

func (v *validator) addf(format string, args ...any) {
	v.problems = append(v.problems, fmt.Sprintf(format, args...))
}

func (v *validator) check(field string, err error) {
	if err != nil {
		v.addf("%s: %v", field, err)
	}
}

func (v *validator) optional(field, value string, f func(string) error) {
	if value != "" {
		v.check(field, f(value))
	}
}

func (v *validator) id(field string, id int64) { v.rangeInt(field, id, 1, maxID) }

func (v *validator) rangeInt(field string, n, lo, hi int64) {
	if n < lo || n > hi {
		v.addf("%s: %d is outside %d..%d", field, n, lo, hi)
	}
}

func (v *validator) image(field string, im Image) {
	v.id(field+".id", im.ID)
	v.check(field+".name", ValidImageName(im.Name))
	v.id(field+".revision_id", im.RevisionID)
	v.rangeInt(field+".revision", int64(im.Revision), 0, 1<<31-1)
	if im.OSType != OSLinux && im.OSType != OSWindows {
		v.addf("%s.os_type: %q is not linux or windows", field, im.OSType)
	}
	if im.OSName != "" && !osNameRe.MatchString(im.OSName) {
		v.addf("%s.os_name: %q is not 1-100 characters of [A-Za-z0-9 ._()+,-] starting with a letter or digit", field, im.OSName)
	}
	v.rangeInt(field+".min_ram_mb", int64(im.MinRAMMB), 0, maxRAMMB)
	v.rangeInt(field+".min_cpus", int64(im.MinCPUs), 0, maxCPUs)
}

func (v *validator) targetImage(field string, t TargetImage) {
	v.id(field+".image_id", t.ImageID)
	v.check(field+".name", ValidImageName(t.Name))
	v.id(field+".revision_id", t.RevisionID)
	v.rangeInt(field+".revision", int64(t.Revision), 0, 1<<31-1)
}

func (v *validator) text(field, s string) {
	if err := ValidText(s, MaxInfoLen); err != nil {
		v.addf("%s: %v", field, err)
	}
}

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &invalidError{problems: v.problems}
}
