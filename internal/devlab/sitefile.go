package devlab

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/vclq/vclq/internal/esxsim"
)

// SiteFile describes a running lab to whatever attaches to it (a bridge with its own
// VCL database, a worker run by hand): `vclq dev --site-file`.
type SiteFile struct {
	NATSURL string `json:"nats_url"`
	// ManagementKeyFile is the management node's SSH private key; KnownHostsFile its
	// known_hosts; ManagementIP the address guests see it at.
	ManagementKeyFile string `json:"management_key_file"`
	KnownHostsFile    string `json:"known_hosts_file"`
	ManagementIP      string `json:"management_ip"`
	// SealKeyFile is the bridge public key passwords are sealed to ("" when `vclq dev`
	// generated a key and kept no private half).
	SealKeyFile string `json:"seal_key_file,omitempty"`
	// Guests is "namespace" or "simulated".
	Guests  string      `json:"guests"`
	Workers int         `json:"workers"`
	Hosts   []SiteHost  `json:"hosts"`
	Images  []SiteImage `json:"images"`
	Slots   []SiteSlot  `json:"slots"`
}

// SiteHost is one ESX host: vmhost.id and its computer's hostname, how to reach it.
type SiteHost struct {
	VMHostID       int64           `json:"vmhost_id"`
	Name           string          `json:"name"`
	URL            string          `json:"url"`
	Username       string          `json:"username"`
	Password       string          `json:"password"`
	Thumbprint     string          `json:"thumbprint"`
	ThumbprintSHA1 string          `json:"thumbprint_sha1"`
	Datastores     []SiteDatastore `json:"datastores"`
	PortGroups     []string        `json:"port_groups"`
}

// SiteDatastore is a host's datastore as the host reports it (summary.url).
type SiteDatastore struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// UUID is the VMFS volume's: /vmfs/volumes/<uuid>/path names the datastore in a
	// vmprofile as well as its name does.
	UUID string `json:"uuid,omitempty"`
}

// SiteImage is a base image seeded on every host.
type SiteImage struct {
	ID         int64  `json:"image_id"`
	Name       string `json:"name"`
	RevisionID int64  `json:"imagerevision_id"`
	Revision   int    `json:"revision"`
	OSType     string `json:"os_type"`
}

// SiteSlot is one VM computer.
type SiteSlot struct {
	ComputerID int64  `json:"computer_id"`
	Hostname   string `json:"hostname"`
	ShortName  string `json:"short_name"`
	PrivateIP  string `json:"private_ip"`
	Eth0MAC    string `json:"eth0_mac"`
	Eth1MAC    string `json:"eth1_mac"`
	VMHostID   int64  `json:"vmhost_id"`
	Host       string `json:"host"`
}

// Site describes the lab; natsURL is the server it is attached to. Datastores and
// port groups are read from each host.
func (l *Lab) Site(ctx context.Context, natsURL string) (SiteFile, error) {
	s := SiteFile{NATSURL: natsURL, ManagementKeyFile: l.KeyFile, KnownHostsFile: l.KnownHosts, ManagementIP: l.ManagementIP, Guests: "simulated"}
	if l.Guests != nil {
		s.Guests = "namespace"
	}
	for i, h := range l.ESX.Hosts {
		sh, err := siteHost(ctx, h)
		if err != nil {
			return SiteFile{}, fmt.Errorf("devlab: describe host %s: %w", h.Name, err)
		}
		sh.VMHostID = int64(i + 1)
		s.Hosts = append(s.Hosts, sh)
	}
	for _, im := range l.Images {
		os := im.OSType
		if os == "" {
			os = "linux"
		}
		s.Images = append(s.Images, SiteImage{ID: im.ID, Name: im.Name, RevisionID: im.RevisionID, Revision: im.Revision, OSType: os})
	}
	for _, sl := range l.Slots {
		c := sl.Computer
		s.Slots = append(s.Slots, SiteSlot{ComputerID: c.ID, Hostname: c.Hostname, ShortName: c.ShortName, PrivateIP: c.PrivateIP,
			Eth0MAC: c.Eth0MAC, Eth1MAC: c.Eth1MAC, VMHostID: sl.HostID, Host: sl.Host.Name})
	}
	return s, nil
}

// siteHost reads a host's datastores and port groups through its observer login.
func siteHost(ctx context.Context, h *esxsim.Host) (SiteHost, error) {
	sh := SiteHost{Name: h.Name, URL: h.URL.String(), Username: h.Username, Password: h.Password,
		Thumbprint: h.Thumbprint, ThumbprintSHA1: h.ThumbprintSHA1}
	c, err := h.Observer(ctx)
	if err != nil {
		return SiteHost{}, err
	}
	f := find.NewFinder(c, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		return SiteHost{}, fmt.Errorf("datacenter: %w", err)
	}
	f.SetDatacenter(dc)
	dss, err := f.DatastoreList(ctx, "*")
	if err != nil {
		return SiteHost{}, fmt.Errorf("list datastores: %w", err)
	}
	refs := make([]types.ManagedObjectReference, len(dss))
	for i, d := range dss {
		refs[i] = d.Reference()
	}
	var mds []mo.Datastore
	if err := property.DefaultCollector(c).Retrieve(ctx, refs, []string{"summary", "info"}, &mds); err != nil {
		return SiteHost{}, fmt.Errorf("read datastores: %w", err)
	}
	for _, d := range mds {
		sd := SiteDatastore{Name: d.Summary.Name, URL: d.Summary.Url}
		if v, ok := d.Info.(*types.VmfsDatastoreInfo); ok && v.Vmfs != nil {
			sd.UUID = v.Vmfs.Uuid
		}
		sh.Datastores = append(sh.Datastores, sd)
	}
	slices.SortFunc(sh.Datastores, func(a, b SiteDatastore) int { return strings.Compare(a.Name, b.Name) })
	nets, err := f.NetworkList(ctx, "*")
	if err != nil {
		return SiteHost{}, fmt.Errorf("list port groups: %w", err)
	}
	for _, n := range nets {
		p := n.GetInventoryPath()
		sh.PortGroups = append(sh.PortGroups, p[strings.LastIndex(p, "/")+1:])
	}
	slices.Sort(sh.PortGroups)
	return sh, nil
}
