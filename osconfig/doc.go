// Package osconfig configures loaded guests over SSH, as VCL's OS modules do:
// readiness (WaitForResponse), node status from currentimage.txt, post-load (firewall,
// random root password, private keys cleared, host name, vcld_post_load tag), user
// accounts, grant_access to the user's IP, taint, sanitize and pre-capture — for Linux
// (POSIX shell as root) and Windows (PowerShell through OpenSSH).
//
// # Connection
//
// A Client logs in as root with the management node's private key (Config.KeyFile) and
// opens one connection per operation. Every command has a timeout
// (Config.CommandTimeout unless the command sets its own); its exit status and stderr
// are captured, a non-zero exit is a *CommandError wrapping ErrCommandFailed.
//
// # Host key policy
//
// Host keys live in one known_hosts file (Config.KnownHostsFile, golang.org/x/crypto/
// ssh/knownhosts format, one plain entry per guest address):
//
//   - A guest's key is recorded the first time we connect to its address (after its
//     first load) and enforced on every later connection.
//   - A different key is refused with ErrHostKeyChanged, unless the load flow called
//     ExpectNewHostKey(slot) because it has just re-imaged that slot's VM: then the new
//     key replaces the old one. The allowance is consumed by the first successful host
//     key check of that slot, changed key or not, so it cannot be used later.
//   - While a recorded key exists, the client offers only its algorithm, so a guest
//     cannot switch to another of its keys.
//   - InsecureIgnoreHostKey is never used. WaitForResponse stops at once on
//     ErrHostKeyChanged instead of retrying.
//   - With Config.SharedHostKeys, what a node records is shared with the other
//     management nodes: a changed key is accepted when it is the one the store holds
//     for the slot (another node re-imaged it), and a first contact is refused when it
//     presents another key than the store's.
//
// # Input safety
//
// Every value from a message is validated (messages.ValidUsername, ValidHostname,
// ValidIP, ValidSSHPublicKey) before any connection is made; invalid input returns
// ErrInvalidInput and no byte goes to the guest. Validated values reach the guest's
// shell only through ShellQuote (PowerShell: PSQuote), or as stdin. Secrets (passwords)
// travel only on stdin, are of type Secret (which prints as "[redacted]"), and are
// never logged or put in errors.
//
// # Progress
//
// Operations report VCL loadlog names (messages.Load*) through the Progress interface:
// machinebooted when the guest answers, addinguser when accounts are made, info for
// post-load, grant_access, taint, sanitize and pre-capture.
package osconfig
