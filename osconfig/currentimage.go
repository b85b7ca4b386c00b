package osconfig

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/vclq/vclq/messages"
)

// Tags written to currentimage.txt.
const (
	TagPostLoad = "vcld_post_load"
	TagTainted  = "vcld_tainted"
)

// NodeStatus is what a guest's currentimage.txt says.
type NodeStatus struct {
	ImageName  string // first line: imagerevision.imagename
	ImageID    int64  // id=
	RevisionID int64  // imagerevision_id=
	ComputerID int64  // computer_id= (0 when absent)
	PostLoad   bool   // vcld_post_load=success...
	Tainted    bool   // a vcld_tainted line: a user logged in since the load
	// Fields holds every key=value line, as written.
	Fields map[string]string
}

// Readiness is node_status's answer.
type Readiness string

// Readiness values, as VCL's node_status.
const (
	Ready    Readiness = "READY"     // right image, post-load done, untainted
	PostLoad Readiness = "POST_LOAD" // right image, post-load still to do
	Reload   Readiness = "RELOAD"    // anything else: load the image
)

// ParseCurrentImage parses currentimage.txt: the image name on the first line, then
// key=value lines. Unknown lines are kept in Fields.
func ParseCurrentImage(b []byte) (NodeStatus, error) {
	s := NodeStatus{Fields: map[string]string{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		line := strings.TrimSpace(strings.TrimSuffix(sc.Text(), "\r"))
		if line == "" {
			continue
		}
		if first {
			first = false
			if !strings.Contains(line, "=") {
				s.ImageName = line
				continue
			}
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		s.Fields[k] = v
		switch k {
		case "id":
			s.ImageID, _ = strconv.ParseInt(v, 10, 64)
		case "imagerevision_id":
			s.RevisionID, _ = strconv.ParseInt(v, 10, 64)
		case "computer_id":
			s.ComputerID, _ = strconv.ParseInt(v, 10, 64)
		case TagPostLoad:
			s.PostLoad = strings.HasPrefix(v, "success")
		case TagTainted:
			s.Tainted = true
		}
	}
	if err := sc.Err(); err != nil {
		return NodeStatus{}, err
	}
	if s.ImageName == "" {
		return s, fmt.Errorf("%w: no image name on the first line", ErrNoCurrentImage)
	}
	return s, nil
}

// For says whether the guest is ready for img: Ready (same image and revision,
// post-load done, not tainted), PostLoad (same image, post-load not done, not
// tainted) or Reload.
func (s NodeStatus) For(img messages.Image) Readiness {
	if s.ImageName != img.Name || (s.RevisionID != 0 && s.RevisionID != img.RevisionID) || s.Tainted {
		return Reload
	}
	if s.PostLoad {
		return Ready
	}
	return PostLoad
}
