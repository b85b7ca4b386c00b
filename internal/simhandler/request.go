package simhandler

import (
	"fmt"
	"time"

	"github.com/vclq/vclq/messages"
)

// Request returns a valid request of the kind for a reservation on computer (slot)
// id computer (1-65000), for tests, benchmarks and the dev demo. Modified is now, so
// its MsgID is unique per call.
func Request(kind messages.Kind, reservation, computer int64) *messages.Request {
	short := fmt.Sprintf("vm-%03d", computer)
	now := time.Now().UTC()
	r := &messages.Request{
		Schema: messages.SchemaVersion,
		Kind:   kind,
		Request: messages.RequestInfo{
			ID: reservation + 100000, State: string(kind), Start: now.Truncate(time.Second),
			End: now.Truncate(time.Second).Add(2 * time.Hour), Modified: now,
		},
		Reservation: messages.ReservationInfo{ID: reservation},
		Computer: messages.Computer{
			ID: computer, Hostname: short + ".vcl.example.edu", ShortName: short,
			PrivateIP: fmt.Sprintf("192.0.2.%d", 1+computer%250), RAMMB: 2048, CPUs: 2,
		},
		VMHost: messages.VMHost{ID: 1, Hostname: "esx-01.vcl.example.edu", Profile: messages.VMProfile{
			DatastorePath: "/vmfs/volumes/datastore1", VirtualSwitch0: "VCL Private", VMDisk: messages.VMDiskShared,
		}},
		Image: messages.Image{ID: 12, Name: "vmwarelinux-centos7-v3", RevisionID: 44, Revision: 3, OSType: messages.OSLinux},
	}
	switch kind {
	case messages.KindReclaim:
		r.Request.State = messages.StateTimeout
	case messages.KindReserved:
		r.RemoteIP = "198.51.100.7"
		r.Users = []messages.User{{ID: 900, Login: "alice"}}
	case messages.KindImage:
		r.TargetImage = &messages.TargetImage{ImageID: 13, Name: "vmwarelinux-custom-v1", RevisionID: 45, Revision: 1}
	}
	return r
}
