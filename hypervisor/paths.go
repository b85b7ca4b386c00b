package hypervisor

import (
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/vclq/vclq/messages"
)

// dsPath is a location on a datastore: the datastore name and a slash-separated path
// relative to its root ("" for the root).
type dsPath struct {
	DS   string
	Path string
}

// parsePath maps a vmprofile path, "/vmfs/volumes/<datastore>/<path>",
// "[<datastore>] <path>" or a bare datastore name (its root, as in vcl.sql's
// profiles), to a datastore and a relative path. The datastore must be named by its
// name, not by its UUID.
func parsePath(s string) (dsPath, error) {
	if err := messages.ValidDatastorePath(s); err != nil {
		return dsPath{}, err
	}
	if !strings.HasPrefix(s, "[") && !strings.HasPrefix(s, "/") {
		return dsPath{DS: s}, nil
	}
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		rel := strings.TrimSpace(s[end+1:])
		return dsPath{DS: s[1:end], Path: cleanRel(rel)}, nil
	}
	rest, ok := strings.CutPrefix(s, "/vmfs/volumes/")
	if !ok {
		return dsPath{}, fmt.Errorf("path %q is not under /vmfs/volumes/<datastore>", s)
	}
	ds, rel, _ := strings.Cut(rest, "/")
	if ds == "" {
		return dsPath{}, fmt.Errorf("path %q names no datastore", s)
	}
	return dsPath{DS: ds, Path: cleanRel(rel)}, nil
}

func cleanRel(rel string) string {
	rel = strings.Trim(path.Clean("/"+rel), "/")
	return rel
}

// Join appends path elements (each already validated: no "..").
func (p dsPath) Join(elem ...string) dsPath {
	return dsPath{DS: p.DS, Path: strings.TrimPrefix(path.Join(append([]string{p.Path}, elem...)...), "/")}
}

// String is the vSphere form "[ds] path" ("[ds]" for the root).
func (p dsPath) String() string {
	if p.Path == "" {
		return "[" + p.DS + "]"
	}
	return "[" + p.DS + "] " + p.Path
}

// Base is the last element of the path.
func (p dsPath) Base() string { return path.Base(p.Path) }

// Dir is the parent directory.
func (p dsPath) Dir() dsPath {
	d := path.Dir(p.Path)
	if d == "." || d == "/" {
		d = ""
	}
	return dsPath{DS: p.DS, Path: d}
}

// parseDSPath parses "[ds] path" as the host reports it.
func parseDSPath(s string) (dsPath, bool) {
	if !strings.HasPrefix(s, "[") {
		return dsPath{}, false
	}
	end := strings.Index(s, "]")
	if end < 0 {
		return dsPath{}, false
	}
	return dsPath{DS: s[1:end], Path: strings.TrimSpace(s[end+1:])}, true
}

// VMName is VCL's name of a slot's VM and of its directory:
// <short_name>_<image id>-v<revision>.
func VMName(slot Slot, im Image) string {
	return fmt.Sprintf("%s_%d-v%d", slot.ShortName, im.ID, im.Revision)
}

// slotPattern matches the names of a slot's VMs and directories, as VCL does:
// ^<short_name>_\d+-v\d+
func slotPattern(short string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(short) + `_\d+-v\d+`)
}

// vmDir is the slot VM's directory for image im.
func (pr profilePaths) vmDir(slot Slot, im Image) dsPath { return pr.vms.Join(VMName(slot, im)) }

// basePath is the shared base disk of an image: <datastorepath>/<name>/<name>.vmdk.
func (pr profilePaths) basePath(name string) dsPath { return pr.images.Join(name, name+".vmdk") }

// repoPath is the repository copy of an image, if the profile has a repository.
func (pr profilePaths) repoPath(name string) (dsPath, bool) {
	if pr.repo == nil {
		return dsPath{}, false
	}
	return pr.repo.Join(name, name+".vmdk"), true
}

// profilePaths are a validated profile's locations.
type profilePaths struct {
	images dsPath
	vms    dsPath
	repo   *dsPath
}

func (p Profile) paths() (profilePaths, error) {
	if err := p.Validate(); err != nil {
		return profilePaths{}, err
	}
	var pp profilePaths
	pp.images, _ = parsePath(p.DatastorePath)
	pp.vms = pp.images
	if p.VMPath != "" {
		pp.vms, _ = parsePath(p.VMPath)
	}
	if p.RepositoryPath != "" {
		r, _ := parsePath(p.RepositoryPath)
		pp.repo = &r
	}
	return pp, nil
}
