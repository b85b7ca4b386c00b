package guestlab

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"
)

// A guest's /etc is an overlay: the lab's template (a copy of the host's /etc made
// once, without host keys, with the lab's sshd_config) as its read-only lower layer,
// and the guest's own upper layer (<guest dir>/etc-upper) holding what the guest
// changed and its host key and hostname. A fresh disk is an empty upper layer: making
// one costs a few small files instead of copying /etc (1,300 files here, 0.27 s of
// CPU a boot, the largest single cost of a simulated load).

const (
	etcUpper = "etc-upper"
	etcWork  = "etc-work"
)

// etcTemplate returns the lab's /etc template, making it at the first call.
func (l *Lab) etcTemplate(ctx context.Context) (string, error) {
	l.tmplMu.Lock()
	defer l.tmplMu.Unlock()
	if l.tmpl != "" {
		return l.tmpl, nil
	}
	dir := filepath.Join(l.dir, ".etc-template")
	if strings.ContainsAny(dir, ",:\\") {
		return "", fmt.Errorf("guestlab: lab directory %q: overlayfs options cannot hold ',', ':' or '\\'", l.dir)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if _, err := run(ctx, nil, "cp", "-a", "/etc", dir); err != nil {
		return "", err
	}
	keys, _ := filepath.Glob(filepath.Join(dir, "ssh", "ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return "", err
		}
	}
	if err := os.RemoveAll(filepath.Join(dir, "ssh", "sshd_config.d")); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "ssh", "sshd_config"), []byte(sshdConfig), 0o644); err != nil {
		return "", err
	}
	l.tmpl = dir
	return dir, nil
}

// makeEtc makes the guest's /etc fresh: an empty upper layer with a new host key and
// the guest's hostname.
func (g *Guest) makeEtc(ctx context.Context) error {
	if _, err := g.lab.etcTemplate(ctx); err != nil {
		return err
	}
	for _, d := range []string{etcUpper, etcWork} {
		if err := os.RemoveAll(filepath.Join(g.dir, d)); err != nil {
			return err
		}
	}
	upper := filepath.Join(g.dir, etcUpper)
	if err := os.MkdirAll(filepath.Join(upper, "ssh"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(g.dir, etcWork), 0o700); err != nil {
		return err
	}
	if _, err := WriteSSHKey(filepath.Join(upper, "ssh", "ssh_host_ed25519_key"), "root@"+g.name); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(upper, "hostname"), []byte(g.name+"\n"), 0o644)
}

// WriteSSHKey writes a new ed25519 key pair as ssh-keygen -t ed25519 does: the
// private key in OpenSSH's format to file (mode 0600), the public one with comment to
// file.pub. It returns the public key's authorized_keys line, without the comment.
func WriteSSHKey(file, comment string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return "", err
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", err
	}
	line := strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(sp)), "\n")
	return line, os.WriteFile(file+".pub", []byte(line+" "+comment+"\n"), 0o644)
}

// template is the lab's /etc template ("" before the first disk).
func (l *Lab) template() string {
	l.tmplMu.Lock()
	defer l.tmplMu.Unlock()
	return l.tmpl
}

// etcMount is the boot script's line mounting the guest's /etc.
func (g *Guest) etcMount() string {
	return fmt.Sprintf("mount -t overlay overlay -o %s /etc",
		shq("lowerdir="+g.lab.template()+",upperdir="+filepath.Join(g.dir, etcUpper)+",workdir="+filepath.Join(g.dir, etcWork)))
}

// DiskFile returns where the file at path (absolute, in the guest) lies on the
// guest's disk, as the guest sees it, whether or not the guest runs; ok is false if
// the guest has no such file. For reading a stopped guest's disk in tests.
func (g *Guest) DiskFile(path string) (hostPath string, ok bool) {
	rel := strings.TrimPrefix(filepath.Clean("/"+path), "/")
	top, rest, _ := strings.Cut(rel, "/")
	switch top {
	case "root", "home":
		p := filepath.Join(g.dir, top, rest)
		_, err := os.Lstat(p)
		return p, err == nil
	case "etc":
	default:
		return "", false
	}
	// The overlay's view: the upper layer's entry, unless it is a whiteout; the
	// template's, unless an upper directory on the way is opaque.
	upper := filepath.Join(g.dir, etcUpper)
	parts := strings.Split(rest, "/")
	lowerVisible := true
	for i := range parts {
		p := filepath.Join(append([]string{upper}, parts[:i+1]...)...)
		st, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if isWhiteout(st) {
			return "", false
		}
		if i < len(parts)-1 && st.IsDir() && isOpaque(p) {
			lowerVisible = false
		}
	}
	if p := filepath.Join(upper, rest); exists(p) {
		return p, true
	}
	if !lowerVisible {
		return "", false
	}
	p := filepath.Join(g.lab.template(), rest)
	return p, exists(p)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// isWhiteout tells overlayfs's mark of a deleted lower file: a 0/0 character device.
func isWhiteout(st fs.FileInfo) bool {
	if st.Mode()&fs.ModeCharDevice == 0 {
		return false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && sys.Rdev == 0
}

func isOpaque(dir string) bool {
	buf := make([]byte, 1)
	n, err := syscall.Getxattr(dir, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}
