package esxsim

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vmdk"
)

// SeedImage writes a base image as VCL lays it out: <dir>/<name>/<name>.vmdk (a
// descriptor) and <name>-flat.vmdk holding size bytes of non-zero data (rounded up to
// 512-byte sectors), on datastore ds. dir is relative to the datastore ("" for its
// root). It returns the datastore path of the descriptor, "[ds] dir/name/name.vmdk".
func (h *Host) SeedImage(ds, dir, name string, size int64) (string, error) {
	root, ok := h.Datastores[ds]
	if !ok {
		return "", fmt.Errorf("esxsim: host %s: no datastore %q", h.Name, ds)
	}
	rel := path.Join(dir, name)
	d := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", err
	}
	sectors := (size + vmdk.SectorSize - 1) / vmdk.SectorSize
	if err := writeFlat(filepath.Join(d, name+"-flat.vmdk"), sectors*vmdk.SectorSize); err != nil {
		return "", err
	}
	if err := writeDescriptor(filepath.Join(d, name+".vmdk"), name+"-flat.vmdk", sectors); err != nil {
		return "", err
	}
	return fmt.Sprintf("[%s] %s", ds, path.Join(rel, name+".vmdk")), nil
}

func writeFlat(file string, size int64) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(rand.IntN(255) + 1)
	}
	w := bufio.NewWriterSize(f, len(buf))
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		if _, err := w.Write(buf[:n]); err != nil {
			_ = f.Close()
			return err
		}
		left -= n
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func writeDescriptor(file, flat string, sectors int64) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	desc := vmdk.NewDescriptor(vmdk.Extent{Size: sectors, Info: flat})
	desc.DDB["adapterType"] = "lsilogic"
	if err := desc.Write(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// diskManager replaces vcsim's VirtualDiskManager to make CopyVirtualDisk behave as
// on ESX: the copy of a child (delta) disk is consolidated into a standalone disk, and
// the copied descriptor names the copied extent.
type diskManager struct {
	*simulator.VirtualDiskManager
	h *Host
}

func (h *Host) installDiskManager(ref types.ManagedObjectReference) {
	if vdm, ok := h.model.Map().Get(ref).(*simulator.VirtualDiskManager); ok {
		h.model.Map().Put(&diskManager{VirtualDiskManager: vdm, h: h})
	}
}

// CopyVirtualDiskTask implements the SOAP method.
func (m *diskManager) CopyVirtualDiskTask(ctx *simulator.Context, req *types.CopyVirtualDisk_Task) soap.HasFault {
	task := simulator.CreateTask(m, "copyVirtualDisk", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, m.copyDisk(ctx, req)
	})
	return &methods.CopyVirtualDisk_TaskBody{Res: &types.CopyVirtualDisk_TaskResponse{Returnval: task.Run(ctx)}}
}

func (m *diskManager) copyDisk(ctx *simulator.Context, req *types.CopyVirtualDisk_Task) types.BaseMethodFault {
	// Follow the chain to its root: only the root holds data in vcsim.
	src := req.SourceName
	for range 64 {
		p := parentOf(ctx, m.h.model.Map(), src)
		if p == "" {
			break
		}
		src = p
	}
	srcDesc, fault := m.h.resolve(src)
	if fault != nil {
		return fault
	}
	dstDesc, fault := m.h.resolve(req.DestName)
	if fault != nil {
		return fault
	}
	if _, err := os.Stat(dstDesc); err == nil && !isTrue(req.Force) {
		return &types.FileAlreadyExists{FileFault: types.FileFault{File: req.DestName}}
	}
	if _, err := os.Stat(filepath.Dir(dstDesc)); err != nil {
		return &types.FileNotFound{FileFault: types.FileFault{File: path.Dir(req.DestName)}}
	}
	f, err := os.Open(srcDesc)
	if err != nil {
		return fileFault(src, err)
	}
	desc, err := vmdk.ParseDescriptor(f)
	_ = f.Close()
	if err != nil || len(desc.Extent) == 0 {
		return &types.FileFault{File: src}
	}
	srcFlat := filepath.Join(filepath.Dir(srcDesc), desc.Extent[0].Info)
	dstFlatName := simulator.VirtualDiskBackingFileName(filepath.Base(dstDesc))
	if err := copyFile(srcFlat, filepath.Join(filepath.Dir(dstDesc), dstFlatName)); err != nil {
		return fileFault(req.DestName, err)
	}
	if err := writeDescriptor(dstDesc, dstFlatName, desc.Capacity()/vmdk.SectorSize); err != nil {
		return fileFault(req.DestName, err)
	}
	return nil
}

// parentOf finds the parent disk of name in the configuration of any VM.
func parentOf(ctx *simulator.Context, r *simulator.Registry, name string) string {
	var parent string
	for _, e := range r.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		ctx.WithLock(vm, func() {
			if vm.Config == nil {
				return
			}
			for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
				b, ok := d.(*types.VirtualDisk).Backing.(*types.VirtualDiskFlatVer2BackingInfo)
				if ok && b.FileName == name && b.Parent != nil {
					parent = b.Parent.FileName
				}
			}
		})
		if parent != "" {
			return parent
		}
	}
	return ""
}

func (h *Host) resolve(p string) (string, types.BaseMethodFault) {
	var dp object.DatastorePath
	if !dp.FromString(p) {
		return "", &types.InvalidDatastorePath{DatastorePath: p}
	}
	dir, ok := h.Datastores[dp.Datastore]
	if !ok {
		return "", &types.InvalidDatastore{Name: dp.Datastore}
	}
	return filepath.Join(dir, filepath.FromSlash(dp.Path)), nil
}

func copyFile(src, dst string) error {
	r, err := os.Open(src)
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		_ = w.Close()
		return err
	}
	return w.Close()
}

func fileFault(name string, err error) types.BaseMethodFault {
	if errors.Is(err, fs.ErrNotExist) {
		return &types.FileNotFound{FileFault: types.FileFault{File: name}}
	}
	return &types.CannotCreateFile{FileFault: types.FileFault{File: name}}
}

func isTrue(b *bool) bool { return b != nil && *b }
