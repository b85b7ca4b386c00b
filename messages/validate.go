package messages

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// Limits on individual values. They are deliberately tight: everything here ends up
// in file names, VM names, guest accounts or firewall rules.
const (
	MaxHostnameLen  = 253
	MaxLabelLen     = 63
	MaxUsernameLen  = 32
	MaxImageNameLen = 100
	MaxPathLen      = 255
	MaxSSHKeyLen    = 16 * 1024
	MaxSSHKeys      = 32
	MaxUsers        = 64
	MaxInfoLen      = 4096
)

var (
	labelRe     = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	hostnameRe  = regexp.MustCompile(`^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
	macRe       = regexp.MustCompile(`^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$`)
	usernameRe  = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	imageNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)
	// An absolute POSIX path of safe characters, or a vSphere datastore path "[ds] dir".
	absPathRe    = regexp.MustCompile(`^/[A-Za-z0-9._/-]{0,254}$`)
	dsPathRe     = regexp.MustCompile(`^\[[A-Za-z0-9._-][A-Za-z0-9 ._-]{0,79}\](?: [A-Za-z0-9._/-]{0,200})?$`)
	dsNameRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$`)
	switchNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 ._-]{0,79}$`)
	osNameRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 ._()+,-]{0,99}$`)
	workerRe     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$`)
	errorCodeRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`)
	sealedRe     = regexp.MustCompile(`^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$`)
	sshKeyRe     = regexp.MustCompile(`^(?:ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [A-Za-z0-9@._+:-]{1,100})?$`)
)

// ValidHostname reports whether s is an RFC 1123 host name (letters, digits, hyphens,
// dot-separated labels of at most 63 characters, at most 253 in all).
func ValidHostname(s string) error {
	if s == "" {
		return fmt.Errorf("hostname is empty")
	}
	if len(s) > MaxHostnameLen {
		return fmt.Errorf("hostname is %d characters, more than %d", len(s), MaxHostnameLen)
	}
	if hostnameRe.MatchString(s) {
		return nil
	}
	for _, l := range strings.Split(s, ".") {
		if !labelRe.MatchString(l) {
			return fmt.Errorf("hostname %q: label %q is not letters, digits and inner hyphens of 1-63 characters", s, l)
		}
	}
	return fmt.Errorf("hostname %q is not dot-separated labels", s)
}

// ShortName is VCL's computer short name: the host name up to the first dot.
func ShortName(hostname string) string {
	short, _, _ := strings.Cut(hostname, ".")
	return short
}

// ValidShortName reports whether s is a single host name label.
func ValidShortName(s string) error {
	if !labelRe.MatchString(s) {
		return fmt.Errorf("short name %q is not one host name label", s)
	}
	return nil
}

// ValidIP reports whether s is a plain IPv4 or IPv6 address (no zone, no prefix) that
// can address a host: not unspecified, not multicast.
func ValidIP(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("%q is not an IP address", s)
	}
	if a.Zone() != "" {
		return fmt.Errorf("IP address %q has a zone", s)
	}
	if a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("IP address %q cannot address a host", s)
	}
	if a.String() != s && a.Unmap().String() != s {
		return fmt.Errorf("IP address %q is not in canonical form (%s)", s, a)
	}
	return nil
}

// ValidMAC reports whether s is a colon-separated 48-bit MAC address.
func ValidMAC(s string) error {
	if !macRe.MatchString(s) {
		return fmt.Errorf("%q is not a MAC address like 00:50:56:01:02:03", s)
	}
	return nil
}

// ValidUsername reports whether s is a portable POSIX login name: a lower-case letter or
// underscore, then up to 31 lower-case letters, digits, underscores or hyphens.
func ValidUsername(s string) error {
	if !usernameRe.MatchString(s) {
		return fmt.Errorf("username %q is not 1-32 characters of [a-z0-9_-] starting with a letter or _", s)
	}
	return nil
}

// ValidImageName reports whether s is a safe VCL image name (imagerevision.imagename):
// it becomes a directory and a file name on datastores.
func ValidImageName(s string) error {
	if !imageNameRe.MatchString(s) {
		return fmt.Errorf("image name %q is not 1-100 characters of [A-Za-z0-9._-] starting with a letter or digit", s)
	}
	if strings.Contains(s, "..") {
		return fmt.Errorf("image name %q contains '..'", s)
	}
	return nil
}

// ValidDatastorePath reports whether s is one of the vmprofile path forms VCL
// accepts: an absolute path such as /vmfs/volumes/datastore1/vms (a datastore's name
// or UUID after /vmfs/volumes/), a datastore path such as "[datastore1] vms", or a
// bare datastore name such as datastore1 (its root; the form of vcl.sql's profiles),
// with no "." or ".." segment and no character outside [A-Za-z0-9._/-] (and spaces in
// a bracketed datastore name).
func ValidDatastorePath(s string) error {
	if !absPathRe.MatchString(s) && !dsPathRe.MatchString(s) && !dsNameRe.MatchString(s) {
		return fmt.Errorf("path %q is neither an absolute path, \"[datastore] path\" nor a datastore name of safe characters", s)
	}
	for _, seg := range strings.FieldsFunc(s, func(r rune) bool { return r == '/' || r == ' ' }) {
		if seg == ".." || seg == "." {
			return fmt.Errorf("path %q has a %q segment", s, seg)
		}
	}
	return nil
}

// ValidSwitchName reports whether s is a safe virtual switch / port group name.
func ValidSwitchName(s string) error {
	if !switchNameRe.MatchString(s) {
		return fmt.Errorf("virtual switch %q is not 1-80 characters of [A-Za-z0-9 ._-]", s)
	}
	return nil
}

// ValidSSHPublicKey reports whether s is exactly one OpenSSH public key line
// ("type base64 [comment]") with no options, whose key data parses, and whose comment
// holds only [A-Za-z0-9@._+:-].
func ValidSSHPublicKey(s string) error {
	if len(s) > MaxSSHKeyLen {
		return fmt.Errorf("SSH public key is %d bytes, more than %d", len(s), MaxSSHKeyLen)
	}
	if !sshKeyRe.MatchString(s) {
		return fmt.Errorf("SSH public key is not one line \"type base64 [comment]\" of safe characters")
	}
	pk, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		return fmt.Errorf("SSH public key does not parse: %v", err)
	}
	if len(opts) > 0 || len(rest) > 0 {
		return fmt.Errorf("SSH public key has options or trailing data")
	}
	if pk.Type() != strings.SplitN(s, " ", 2)[0] {
		return fmt.Errorf("SSH public key type %q does not match its data (%s)", strings.SplitN(s, " ", 2)[0], pk.Type())
	}
	return nil
}

// reservedLogins are accounts that exist on every guest image (or are built in on
// Windows); a reservation user can never be one of them, so a message cannot make the
// worker set a key or password on a system account.
var reservedLogins = map[string]bool{
	"root": true, "administrator": true, "guest": true, "defaultaccount": true,
	"daemon": true, "bin": true, "sys": true, "sync": true, "games": true, "man": true,
	"lp": true, "mail": true, "news": true, "uucp": true, "proxy": true, "www-data": true,
	"backup": true, "list": true, "irc": true, "gnats": true, "nobody": true,
	"sshd": true, "adm": true, "halt": true, "shutdown": true, "operator": true,
	"ftp": true, "nfsnobody": true, "polkitd": true, "dbus": true, "vcl": true,
}

// ReservedLogin reports whether login is a system account that no reservation user may
// have (root, administrator, daemon, nobody, the group vcl, ...).
func ReservedLogin(login string) bool { return reservedLogins[login] }

// ValidWorker reports whether s is a worker id: 1-128 characters of [A-Za-z0-9_.:@-]
// starting with a letter or digit (it appears in headers, logs and KV keys).
func ValidWorker(s string) error {
	if !workerRe.MatchString(s) {
		return fmt.Errorf("worker id %q is not 1-128 characters of [A-Za-z0-9_.:@-]", s)
	}
	return nil
}

// ValidText reports whether s is free text fit for a log line or a database column:
// valid UTF-8, at most max bytes, no control character other than tab.
func ValidText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("text is %d bytes, more than %d", len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("text is not valid UTF-8")
	}
	for _, r := range s {
		if r != '\t' && unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("text holds control character %U", r)
		}
	}
	return nil
}

// CleanText makes s acceptable to ValidText: invalid UTF-8 and control characters
// (newlines included) become spaces and the result is cut to at most max bytes on a
// character boundary. Workers use it for loadlog info and result errors.
func CleanText(s string, max int) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, " ") {
		if r != '\t' && unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			r = ' '
		}
		if b.Len()+utf8.RuneLen(r) > max {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
