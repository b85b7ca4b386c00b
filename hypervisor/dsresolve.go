package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// resolveProfile names every datastore of p's paths by the name the host knows it by:
// a datastore may be given by its name or, in "/vmfs/volumes/<uuid>/path" (what
// `ls -l /vmfs/volumes` shows on ESX, and what some VCL sites store), by its UUID.
// A datastore the host has neither by name nor by UUID is refused (ErrNotFound).
// Paths are validated first (no traversal, no shell metacharacters).
func (c *ESX) resolveProfile(ctx context.Context, slot string, p Profile) (Profile, error) {
	if err := p.Validate(); err != nil {
		return p, err
	}
	for _, f := range []*string{&p.DatastorePath, &p.VMPath, &p.RepositoryPath} {
		if *f == "" {
			continue
		}
		dp, err := parsePath(*f)
		if err != nil {
			return p, err
		}
		name, err := c.datastoreName(ctx, slot, dp.DS)
		if err != nil {
			return p, fmt.Errorf("vmprofile path %q: %w", *f, err)
		}
		if name != dp.DS {
			*f = dsPath{DS: name, Path: dp.Path}.String()
		}
	}
	return p, p.Validate()
}

// datastoreName is the name of the host's datastore called ref or whose UUID is ref.
func (c *ESX) datastoreName(ctx context.Context, slot, ref string) (string, error) {
	var name string
	err := c.do(ctx, "datastore "+ref, slot, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return err
		}
		inv.mu.Lock()
		_, known := inv.dss[ref]
		byUUID, resolved := inv.dsUUIDs[ref]
		inv.mu.Unlock()
		switch {
		case known:
			name = ref
			return nil
		case resolved:
			name = byUUID
			return nil
		}
		if _, err := c.datastore(ctx, s, ref); err == nil {
			name = ref
			return nil
		} else if nf := (*find.NotFoundError)(nil); !errors.As(err, &nf) {
			return err
		}
		dss, err := hostDatastores(ctx, s, inv)
		if err != nil {
			return err
		}
		var have []string
		for _, d := range dss {
			if uuid := datastoreUUID(d); uuid != "" && uuid == ref {
				name = d.Summary.Name
				inv.mu.Lock()
				inv.dsUUIDs[ref] = name
				inv.mu.Unlock()
				return nil
			}
			have = append(have, fmt.Sprintf("%s (%s)", d.Summary.Name, d.Summary.Url))
		}
		return fmt.Errorf("%w: host %s has no datastore named or with UUID %q; it has %s", ErrNotFound, c.cfg.Name, ref, strings.Join(have, ", "))
	})
	return name, err
}

// hostDatastores reads the summary and info of every datastore of the host.
func hostDatastores(ctx context.Context, s *hostSession, inv *inventory) ([]mo.Datastore, error) {
	list, err := inv.finder.DatastoreList(ctx, "*")
	if err != nil {
		var nf *find.NotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("list datastores: %w", err)
	}
	refs := make([]types.ManagedObjectReference, len(list))
	for i, d := range list {
		refs[i] = d.Reference()
	}
	var out []mo.Datastore
	if err := property.DefaultCollector(s.vc).Retrieve(ctx, refs, []string{"summary", "info"}, &out); err != nil {
		return nil, fmt.Errorf("read datastores: %w", err)
	}
	return out, nil
}

// datastoreUUID is a datastore's UUID: the last element of its URL
// ("ds:///vmfs/volumes/<uuid>/", as ESX reports every datastore) or, for VMFS, its
// volume's UUID. "" when it has none.
func datastoreUUID(d mo.Datastore) string {
	if u, ok := strings.CutPrefix(strings.TrimSuffix(d.Summary.Url, "/"), "ds:///vmfs/volumes/"); ok && u != "" && !strings.Contains(u, "/") {
		return u
	}
	if v, ok := d.Info.(*types.VmfsDatastoreInfo); ok && v.Vmfs != nil {
		return v.Vmfs.Uuid
	}
	return ""
}

// hostPaths is p's locations with every datastore named as the host names it
// (resolveProfile).
func (c *ESX) hostPaths(ctx context.Context, slot string, p Profile) (profilePaths, error) {
	if _, err := p.paths(); err != nil {
		return profilePaths{}, err
	}
	rp, err := c.resolveProfile(ctx, slot, p)
	if err != nil {
		return profilePaths{}, err
	}
	return rp.paths()
}

// resolveSpec is resolveProfile for a load's profile, in place.
func (c *ESX) resolveSpec(ctx context.Context, spec *LoadSpec) error {
	p, err := c.resolveProfile(ctx, spec.Slot.ShortName, spec.Profile)
	if err != nil {
		return err
	}
	spec.Profile = p
	return nil
}
