package esxsim

import (
	"os"
	"path"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// browser replaces vcsim's HostDatastoreBrowser.SearchDatastore. vcsim's lists a
// folder and then reads each entry's info ignoring the error: an entry deleted in
// between (another slot's VM folder removed on the same datastore) gives a nil info
// that panics the search task's goroutine and with it the whole process. Here a
// vanished entry is skipped, as ESX does.
type browser struct {
	*simulator.HostDatastoreBrowser
	h *Host
}

func (h *Host) installBrowsers() {
	for _, r := range h.model.Map().AllReference("HostDatastoreBrowser") {
		if b, ok := r.(*simulator.HostDatastoreBrowser); ok {
			h.model.Map().Put(&browser{HostDatastoreBrowser: b, h: h})
		}
	}
}

// SearchDatastoreTask implements the SOAP method (one folder, no recursion).
func (b *browser) SearchDatastoreTask(ctx *simulator.Context, req *types.SearchDatastore_Task) soap.HasFault {
	task := simulator.CreateTask(b, "searchDatastore", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return b.search(ctx, req.DatastorePath, req.SearchSpec)
	})
	return &methods.SearchDatastore_TaskBody{Res: &types.SearchDatastore_TaskResponse{Returnval: task.Run(ctx)}}
}

func (b *browser) search(ctx *simulator.Context, dsPath string, spec *types.HostDatastoreBrowserSearchSpec) (types.AnyType, types.BaseMethodFault) {
	dir, fault := b.h.resolve(dsPath)
	if fault != nil {
		return nil, fault
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, &types.FileNotFound{FileFault: types.FileFault{File: dsPath}}
	}
	var dp object.DatastorePath
	dp.FromString(dsPath)
	res := types.HostDatastoreBrowserSearchResults{FolderPath: dsPath}
	if ds := ctx.Map.FindByName(dp.Datastore, b.Datastore); ds != nil {
		ref := ds.Reference()
		res.Datastore = &ref
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			continue // deleted since the listing
		}
		if spec != nil && !matches(spec, e.Name(), info) {
			continue
		}
		fi := types.FileInfo{Path: e.Name(), FileSize: info.Size()}
		mt := info.ModTime()
		fi.Modification = &mt
		if info.IsDir() {
			res.File = append(res.File, &types.FolderFileInfo{FileInfo: fi})
		} else if strings.HasSuffix(e.Name(), ".vmdk") && spec != nil && spec.Details != nil && spec.Details.FileType {
			res.File = append(res.File, &types.VmDiskFileInfo{FileInfo: fi})
		} else {
			res.File = append(res.File, &fi)
		}
	}
	return res, nil
}

// matches applies the spec's name patterns and query types as vcsim does.
func matches(spec *types.HostDatastoreBrowserSearchSpec, name string, info os.FileInfo) bool {
	if len(spec.MatchPattern) > 0 {
		ok := false
		for _, m := range spec.MatchPattern {
			if hit, _ := path.Match(m, name); hit {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(spec.Query) == 0 {
		return true
	}
	for _, q := range spec.Query {
		switch q.(type) {
		case *types.FileQuery:
			return true
		case *types.FolderFileQuery:
			if info.IsDir() {
				return true
			}
		case *types.VmDiskFileQuery:
			if path.Ext(name) == ".vmdk" && !strings.HasSuffix(name, "-flat.vmdk") {
				return true
			}
		case *types.VmConfigFileQuery:
			if path.Ext(name) == ".vmx" {
				return true
			}
		}
	}
	return false
}
