// Package guestlab gives each VM slot a real Linux "machine" for tests and `vclq dev`:
// a network namespace joined to a bridge in the root namespace, a private mount, UTS,
// IPC and PID namespace whose /etc, /root and /home are the guest's own "disk", a real
// sshd with its own host key, and real iptables/nftables. Anything osconfig does over
// SSH (useradd, chpasswd, iptables-restore, hostname) really happens inside the guest
// and can be checked from outside with Guest.Exec.
//
// Layout. A Lab owns one bridge (vq<id>br) holding the first address of its subnet
// (the management node's address as guests see it) and hands out addresses from the
// 10th on to guests (NewGuest) and clients (NewClient: a bare network namespace used as
// "another machine", e.g. a user's PC). The subnet is Config.Subnet, or else the first
// free /27 of 198.51.100.0/24 and 192.0.2.0/24 that overlaps no address or route of the
// host, chosen under a host-wide lock so concurrent labs (parallel test packages) never
// collide. Names carry a random lab id; a lab whose process died is swept by the next
// New.
//
// A guest's disk is a directory, made by NewGuest: /etc is an overlay of a lab-wide
// copy of the host's /etc (host keys removed, our own sshd_config written; made once)
// and the guest's own upper layer (a new ed25519 host key, its hostname, its changes),
// root seeded from /etc/skel plus Config.AuthorizedKeys (only that: the host's /root is
// never copied; it holds credentials), and home copied from the host's /home. Boot(img)
// starts sshd in the namespaces, after writing the image's currentimage.txt in root's
// home when the disk was never booted; Stop kills the guest's PID namespace. Reimage
// gives the guest a fresh disk (and so a new host key) at the next Boot, as a reload
// does; so does booting another image. shutdown, poweroff and halt inside the guest
// stop it (a small script in the guest's /usr/local/sbin). DiskFile reads the disk as
// the guest sees it.
//
// Everything needs root, ip, unshare, nsenter, sshd, ssh-keygen and iptables; Check
// reports what is missing, and NewForTest skips the test with that reason. Close (or the
// test's cleanup) removes the namespaces, links, processes and directories it created.
package guestlab
