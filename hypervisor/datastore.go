package hypervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"path"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// fileInfo is one entry of a datastore folder.
type fileInfo struct {
	Name  string
	Size  int64
	IsDir bool
}

// datastore finds a datastore and its browser by name (once per login).
func (c *ESX) datastore(ctx context.Context, s *hostSession, name string) (datastoreRefs, error) {
	inv, err := c.inventory(ctx, s)
	if err != nil {
		return datastoreRefs{}, err
	}
	inv.mu.Lock()
	r, ok := inv.dss[name]
	inv.mu.Unlock()
	if ok {
		return r, nil
	}
	ds, err := inv.finder.Datastore(ctx, name)
	if err != nil {
		return datastoreRefs{}, err
	}
	b, err := ds.Browser(ctx)
	if err != nil {
		return datastoreRefs{}, err
	}
	r = datastoreRefs{ds: ds, browser: b}
	inv.mu.Lock()
	inv.dss[name] = r
	inv.mu.Unlock()
	return r, nil
}

// list lists the entries of folder dir matching the glob pattern. A missing folder
// lists as empty.
func (c *ESX) list(ctx context.Context, slot string, dir dsPath, pattern string) ([]fileInfo, error) {
	spec := &types.HostDatastoreBrowserSearchSpec{
		MatchPattern: []string{pattern},
		Details:      &types.FileQueryFlags{FileType: true, FileSize: true},
		Query:        []types.BaseFileQuery{&types.FileQuery{}, &types.FolderFileQuery{}},
	}
	info, err := c.task(ctx, "SearchDatastore "+dir.String(), slot, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		r, err := c.datastore(ctx, s, dir.DS)
		if err != nil {
			return nil, err
		}
		return r.browser.SearchDatastore(ctx, dir.String(), spec)
	})
	if errors.Is(err, ErrNotFound) {
		// A missing folder lists as empty; a missing datastore is an error.
		if _, ok := methodFault(err).(*types.FileNotFound); ok {
			return nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	res, ok := info.Result.(types.HostDatastoreBrowserSearchResults)
	if !ok {
		return nil, nil
	}
	var out []fileInfo
	for _, f := range res.File {
		fi := f.GetFileInfo()
		_, isDir := f.(*types.FolderFileInfo)
		out = append(out, fileInfo{Name: path.Base(fi.Path), Size: fi.FileSize, IsDir: isDir})
	}
	return out, nil
}

// exists reports whether the file or folder p exists.
func (c *ESX) exists(ctx context.Context, slot string, p dsPath) (bool, error) {
	files, err := c.list(ctx, slot, p.Dir(), p.Base())
	if err != nil {
		return false, err
	}
	for _, f := range files {
		if f.Name == p.Base() {
			return true, nil
		}
	}
	return false, nil
}

// mkdir creates folder p with its parents; an existing folder is fine.
func (c *ESX) mkdir(ctx context.Context, slot string, p dsPath) error {
	err := c.do(ctx, "MakeDirectory "+p.String(), slot, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return err
		}
		return object.NewFileManager(s.vc).MakeDirectory(ctx, p.String(), inv.dc, true)
	})
	if errors.Is(err, ErrExists) {
		return nil
	}
	return err
}

// remove deletes file or folder p; a missing one is fine.
func (c *ESX) remove(ctx context.Context, slot string, p dsPath) error {
	_, err := c.task(ctx, "DeleteDatastoreFile "+p.String(), slot, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return nil, err
		}
		return object.NewFileManager(s.vc).DeleteDatastoreFile(ctx, p.String(), inv.dc)
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// move moves file or folder src to dst (one operation); dst must not exist.
func (c *ESX) move(ctx context.Context, slot string, src, dst dsPath) error {
	_, err := c.task(ctx, "MoveDatastoreFile "+src.String()+" to "+dst.String(), slot, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return nil, err
		}
		return object.NewFileManager(s.vc).MoveDatastoreFile(ctx, src.String(), inv.dc, dst.String(), inv.dc, false)
	})
	return err
}

// copyDisk copies virtual disk src (and, if it is a child, its chain, consolidated)
// to dst, a thin disk. dst's folder must exist.
func (c *ESX) copyDisk(ctx context.Context, slot string, src, dst dsPath) error {
	spec := &types.VirtualDiskSpec{DiskType: string(types.VirtualDiskTypeThin), AdapterType: string(types.VirtualDiskAdapterTypeLsiLogic)}
	_, err := c.task(ctx, "CopyVirtualDisk "+src.String()+" to "+dst.String(), slot, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return nil, err
		}
		return object.NewVirtualDiskManager(s.vc).CopyVirtualDisk(ctx, src.String(), inv.dc, dst.String(), inv.dc, spec, false)
	})
	return err
}

// moveDisk moves virtual disk src (descriptor and extents) to dst.
func (c *ESX) moveDisk(ctx context.Context, slot string, src, dst dsPath) error {
	_, err := c.task(ctx, "MoveVirtualDisk "+src.String()+" to "+dst.String(), slot, func(ctx context.Context, s *hostSession) (*object.Task, error) {
		inv, err := c.inventory(ctx, s)
		if err != nil {
			return nil, err
		}
		return object.NewVirtualDiskManager(s.vc).MoveVirtualDisk(ctx, src.String(), inv.dc, dst.String(), inv.dc, false)
	})
	return err
}

// freeSpace is the datastore's free space in bytes.
func (c *ESX) freeSpace(ctx context.Context, slot, ds string) (int64, error) {
	var free int64
	err := c.do(ctx, "datastore summary "+ds, slot, c.cfg.CallTimeout, func(ctx context.Context, s *hostSession) error {
		r, err := c.datastore(ctx, s, ds)
		if err != nil {
			return err
		}
		var m mo.Datastore
		if err := r.ds.Properties(ctx, r.ds.Reference(), []string{"summary"}, &m); err != nil {
			return err
		}
		free = m.Summary.FreeSpace
		return nil
	})
	return free, err
}

// tempName is a unique name for a temporary folder, prefixed so it is recognisable.
func tempName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + ".vclq-tmp-" + hex.EncodeToString(b)
}

// diskFiles sums the sizes of an image's disk files in its folder: the descriptor
// <name>.vmdk and its extents <name>-*.vmdk. found reports whether the descriptor exists.
func diskFiles(files []fileInfo, name string) (bytes int64, found bool) {
	for _, f := range files {
		if f.IsDir {
			continue
		}
		switch {
		case f.Name == name+".vmdk":
			found = true
			bytes += f.Size
		case strings.HasPrefix(f.Name, name+"-") && strings.HasSuffix(f.Name, ".vmdk"):
			bytes += f.Size
		}
	}
	return bytes, found
}

func ceilMB(b int64) int64 { return (b + (1<<20 - 1)) >> 20 }
