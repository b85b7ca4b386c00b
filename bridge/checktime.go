package bridge

import (
	"time"

	"github.com/vclq/vclq/messages"
)

// KindForState maps a VCL request state the bridge processes to the request kind
// (subject) that handles it: new, reinstall → new; reload → reload; timeout, deleted →
// reclaim; image → image; reserved (once remoteIP is set) → reserved. A reinstall is
// new.pm's: the reservation's image is loaded again, the users' accounts made again
// with fresh passwords, and the request goes back to reserved (the user connects
// again), not to complete as a reload's does.
func KindForState(state string) (messages.Kind, bool) {
	switch state {
	case messages.StateNew, messages.StateReinstall:
		return messages.KindNew, true
	case messages.StateReload:
		return messages.KindReload, true
	case messages.StateTimeout, messages.StateDeleted:
		return messages.KindReclaim, true
	case messages.StateImage:
		return messages.KindImage, true
	case messages.StateReserved:
		return messages.KindReserved, true
	}
	return "", false
}

// kindStates lists, per kind, the request states a claim moved to pending/<state>; a
// result of that kind applies only to a request in one of them.
var kindStates = map[messages.Kind][]string{
	messages.KindNew:      {messages.StateNew, messages.StateReinstall},
	messages.KindReload:   {messages.StateReload},
	messages.KindReclaim:  {messages.StateTimeout, messages.StateDeleted},
	messages.KindImage:    {messages.StateImage},
	messages.KindReserved: {messages.StateReserved},
}

// polledStates are the request states the bridge reads.
var polledStates = []string{
	messages.StateNew, messages.StateReload, messages.StateReinstall, messages.StateTimeout,
	messages.StateDeleted, messages.StateImage, messages.StateReserved,
}

// Due is the bridge's version of vcld's check_time (utils.pm) for the states it
// processes, with untilStart = request.start − now:
//
//   - new and reload: due once the start is at most preload (35 min) ahead. vcld
//     preloads in the 25–35 minute band before the start and otherwise waits for the
//     start; the bridge publishes anywhere inside the window, so a request made 10
//     minutes ahead is loaded at once instead of idling until its start.
//   - reserved: due once reservation.remoteIP is set (the user clicked Connect).
//   - reinstall, timeout, deleted, image: due now (check_time returns "start").
//   - inuse: not published; once its end has passed the poll moves it to
//     timeout/inuse (vcld's inuse.pm), and the timeout is reclaimed.
//
// The poll query applies the same rule in SQL, against the database's NOW().
func Due(state string, untilStart, preload time.Duration, remoteIP string) bool {
	switch state {
	case messages.StateNew, messages.StateReload:
		return untilStart <= preload
	case messages.StateReserved:
		return remoteIP != ""
	case messages.StateReinstall, messages.StateTimeout, messages.StateDeleted, messages.StateImage:
		return true
	}
	return false
}
