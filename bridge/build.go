package bridge

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vclq/vclq/messages"
)

// bad returns an errBadRow error with the reason.
func bad(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadRow}, args...)...)
}

// build joins the rows of one reservation into a validated request. A database
// failure is returned as is (retried); anything else wraps errBadRow.
func (b *Bridge) build(ctx context.Context, c candidate, kind messages.Kind) (*messages.Request, error) {
	r := &messages.Request{
		Schema:      messages.SchemaVersion,
		Kind:        kind,
		Request:     messages.RequestInfo{ID: c.requestID, State: b.states.name[c.stateID], LastState: b.states.name[c.lastStateID]},
		Reservation: messages.ReservationInfo{ID: c.reservationID},
	}
	if c.startUnix.Valid && c.startUnix.Int64 > 0 {
		r.Request.Start = time.Unix(c.startUnix.Int64, 0).UTC()
	}
	if c.endUnix.Valid && c.endUnix.Int64 > 0 {
		r.Request.End = time.Unix(c.endUnix.Int64, 0).UTC()
	}
	if c.modifiedUnix.Valid && c.modifiedUnix.Int64 > 0 {
		r.Request.Modified = time.Unix(c.modifiedUnix.Int64, 0).UTC()
	}

	var (
		compID                                       sql.NullInt64
		hostname, ip, privIP, mac0, mac1             sql.NullString
		ram, cpus                                    sql.NullInt64
		vmhostRef, curImage, curRev, nextImage       sql.NullInt64
		vhID                                         sql.NullInt64
		vhHostname                                   sql.NullString
		ds, vmpath, repo, sw0, sw1, sw2, sw3, vmdisk sql.NullString
		mnIP                                         sql.NullString
		resImage, resRev, userID                     int64
		compDeleted                                  sql.NullInt64
	)
	err := b.db.QueryRowContext(ctx, `SELECT c.id, c.hostname, c.IPaddress, c.privateIPaddress, c.eth0macaddress, c.eth1macaddress,
	c.RAM, c.procnumber, c.vmhostid, c.currentimageid, c.imagerevisionid, c.nextimageid, c.deleted,
	vh.id, hc.hostname, vp.datastorepath, vp.vmpath, vp.repositorypath,
	vp.virtualswitch0, vp.virtualswitch1, vp.virtualswitch2, vp.virtualswitch3, vp.vmdisk,
	mn.IPaddress, rs.imageid, rs.imagerevisionid, r.userid
FROM reservation rs JOIN request r ON r.id = rs.requestid
LEFT JOIN computer c ON c.id = rs.computerid
LEFT JOIN vmhost vh ON vh.id = c.vmhostid
LEFT JOIN computer hc ON hc.id = vh.computerid
LEFT JOIN vmprofile vp ON vp.id = vh.vmprofileid
LEFT JOIN managementnode mn ON mn.id = rs.managementnodeid
WHERE rs.id = ?`, c.reservationID).Scan(&compID, &hostname, &ip, &privIP, &mac0, &mac1,
		&ram, &cpus, &vmhostRef, &curImage, &curRev, &nextImage, &compDeleted,
		&vhID, &vhHostname, &ds, &vmpath, &repo, &sw0, &sw1, &sw2, &sw3, &vmdisk,
		&mnIP, &resImage, &resRev, &userID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, bad("reservation %d disappeared", c.reservationID)
	}
	if err != nil {
		return nil, fmt.Errorf("reservation %d: read computer and host: %w", c.reservationID, err)
	}
	switch {
	case !compID.Valid:
		return nil, bad("computer %d of reservation %d does not exist", c.computerID, c.reservationID)
	case compDeleted.Int64 != 0:
		return nil, bad("computer %d is deleted", compID.Int64)
	case !vmhostRef.Valid || vmhostRef.Int64 == 0:
		return nil, bad("computer %d (%s) has no vmhost", compID.Int64, hostname.String)
	case !vhID.Valid:
		return nil, bad("computer %d (%s): vmhost %d does not exist", compID.Int64, hostname.String, vmhostRef.Int64)
	case !vhHostname.Valid:
		return nil, bad("vmhost %d: its computer row does not exist", vhID.Int64)
	case !ds.Valid:
		return nil, bad("vmhost %d: its vmprofile does not exist", vhID.Int64)
	}
	r.Computer = messages.Computer{
		ID: compID.Int64, Hostname: hostname.String, ShortName: messages.ShortName(hostname.String),
		PrivateIP: privIP.String, PublicIP: ip.String, Eth0MAC: mac0.String, Eth1MAC: mac1.String,
		RAMMB: int(ram.Int64), CPUs: int(cpus.Int64),
	}
	r.VMHost = messages.VMHost{ID: vhID.Int64, Hostname: vhHostname.String, Profile: messages.VMProfile{
		DatastorePath: ds.String, VMPath: vmpath.String, RepositoryPath: repo.String,
		VirtualSwitch0: sw0.String, VirtualSwitch1: sw1.String, VirtualSwitch2: sw2.String, VirtualSwitch3: sw3.String,
		VMDisk: vmdisk.String,
	}}
	if mnIP.Valid && mnIP.String != "" {
		r.ManagementNodeIP = mnIP.String
	}

	resImg, rootAccess, err := b.image(ctx, resRev)
	if err != nil {
		return nil, fmt.Errorf("reservation %d: image revision %d: %w", c.reservationID, resRev, err)
	}
	if resImg.ID != resImage {
		return nil, bad("reservation %d: image revision %d belongs to image %d, not the reservation's image %d", c.reservationID, resRev, resImg.ID, resImage)
	}
	r.Image = resImg
	if kind == messages.KindImage {
		// The reservation names the image being created; the computer holds the one
		// being captured (VCL's image.pm).
		cur, _, err := b.image(ctx, curRev.Int64)
		if err != nil {
			return nil, fmt.Errorf("reservation %d: computer's current image revision %d: %w", c.reservationID, curRev.Int64, err)
		}
		r.Image = cur
		r.TargetImage = &messages.TargetImage{ImageID: resImg.ID, Name: resImg.Name, RevisionID: resImg.RevisionID, Revision: resImg.Revision}
	}
	if kind == messages.KindReclaim && nextImage.Valid && nextImage.Int64 > 0 && nextImage.Int64 != resImage {
		next, ok, err := b.productionImage(ctx, nextImage.Int64)
		if err != nil {
			return nil, fmt.Errorf("reservation %d: next image %d: %w", c.reservationID, nextImage.Int64, err)
		}
		if ok {
			r.NextImage = &next
		}
	}
	if r.Users, err = b.users(ctx, c.reservationID, userID, rootAccess); err != nil {
		return nil, err
	}
	if kind == messages.KindReserved {
		r.RemoteIP = c.remoteIP.String
	}
	if err := r.Validate(); err != nil {
		return nil, bad("%s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return r, nil
}

// image reads an image revision with its image and OS. A missing row or an OS type
// vclq cannot provision wraps errBadRow.
func (b *Bridge) image(ctx context.Context, revisionID int64) (messages.Image, bool, error) {
	var (
		im               messages.Image
		osName, osType   sql.NullString
		minRAM, minProcs sql.NullInt64
		root             int64
	)
	err := b.db.QueryRowContext(ctx, `SELECT i.id, i.minram, i.minprocnumber, ir.id, ir.revision, ir.imagename, o.name, o.type, COALESCE(m.rootaccess, 1)
FROM imagerevision ir JOIN image i ON i.id = ir.imageid
LEFT JOIN OS o ON o.id = i.OSid LEFT JOIN imagemeta m ON m.id = i.imagemetaid
WHERE ir.id = ?`, revisionID).Scan(&im.ID, &minRAM, &minProcs, &im.RevisionID, &im.Revision, &im.Name, &osName, &osType, &root)
	if errors.Is(err, sql.ErrNoRows) {
		return im, false, bad("image revision %d or its image does not exist", revisionID)
	}
	if err != nil {
		return im, false, err
	}
	im.MinRAMMB, im.MinCPUs = int(minRAM.Int64), int(minProcs.Int64)
	switch osType.String {
	case messages.OSLinux, messages.OSWindows:
		im.OSType = osType.String
	default:
		return im, false, bad("image %d (%s): OS type %q is not linux or windows", im.ID, im.Name, osType.String)
	}
	im.OSName = osName.String
	return im, root != 0, nil
}

// productionImage reads an image's production revision; false when it has none or is
// VCL's placeholder "noimage".
func (b *Bridge) productionImage(ctx context.Context, imageID int64) (messages.Image, bool, error) {
	var rev int64
	err := b.db.QueryRowContext(ctx, `SELECT ir.id FROM imagerevision ir JOIN image i ON i.id = ir.imageid
WHERE ir.imageid = ? AND ir.production = 1 AND ir.deleted = 0 AND i.name <> 'noimage' ORDER BY ir.revision DESC LIMIT 1`, imageID).Scan(&rev)
	if errors.Is(err, sql.ErrNoRows) {
		return messages.Image{}, false, nil
	}
	if err != nil {
		return messages.Image{}, false, err
	}
	im, _, err := b.image(ctx, rev)
	return im, err == nil, err
}

// users reads the request's user and the reservation's extra accounts
// (reservationaccounts), the request's user first.
func (b *Bridge) users(ctx context.Context, reservationID, userID int64, rootAccess bool) ([]messages.User, error) {
	rows, err := b.db.QueryContext(ctx, `SELECT u.id, u.unityid, u.uid, u.usepublickeys, u.sshpublickeys FROM user u
WHERE u.id = ? OR u.id IN (SELECT a.userid FROM reservationaccounts a WHERE a.reservationid = ?)
ORDER BY u.id = ? DESC, u.id`, userID, reservationID, userID)
	if err != nil {
		return nil, fmt.Errorf("reservation %d: read users: %w", reservationID, err)
	}
	defer rows.Close()
	var users []messages.User
	found := false
	for rows.Next() {
		var (
			u       messages.User
			uid     sql.NullInt64
			useKeys int
			keys    sql.NullString
		)
		if err := rows.Scan(&u.ID, &u.Login, &uid, &useKeys, &keys); err != nil {
			return nil, fmt.Errorf("reservation %d: read users: %w", reservationID, err)
		}
		found = found || u.ID == userID
		u.UID = uid.Int64
		if useKeys != 0 {
			for _, k := range strings.Split(strings.ReplaceAll(keys.String, "\r", ""), "\n") {
				if k = strings.TrimSpace(k); k != "" && !strings.HasPrefix(k, "#") {
					u.SSHKeys = append(u.SSHKeys, k)
				}
			}
		}
		u.RootAccess = rootAccess
		users = append(users, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reservation %d: read users: %w", reservationID, err)
	}
	if !found {
		return nil, bad("user %d of the request does not exist", userID)
	}
	return users, nil
}
