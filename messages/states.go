package messages

// VCL state names (table `state`), used for request and computer states.
const (
	StateDeleted        = "deleted"
	StateAvailable      = "available"
	StateReserved       = "reserved"
	StateFailed         = "failed"
	StateReloading      = "reloading"
	StateInUse          = "inuse"
	StateMaintenance    = "maintenance"
	StateTimeout        = "timeout"
	StateComplete       = "complete"
	StateNew            = "new"
	StatePending        = "pending"
	StateImage          = "image"
	StateReload         = "reload"
	StateReinstall      = "reinstall"
	StateToMaintenance  = "tomaintenance"
	StateCheckpoint     = "checkpoint"
	StateImageInUse     = "imageinuse"
	StateClassReserved  = "classreserved"
	StateCleaning       = "cleaning"
	StateImagePrep      = "imageprep"
	StateMakeProduction = "makeproduction"
	StateVMHostInUse    = "vmhostinuse"
	StateToVMHostInUse  = "tovmhostinuse"
	StateRebootSoft     = "rebootsoft"
	StateRebootHard     = "reboothard"
	StateServerModified = "servermodified"
)

// StateIDs maps VCL state names to their ids in VCL 2.5.1's `state` table.
var StateIDs = map[string]int{
	StateDeleted: 1, StateAvailable: 2, StateReserved: 3, StateClassReserved: 4,
	StateFailed: 5, StateReloading: 6, StateImageInUse: 7, StateInUse: 8,
	StateCleaning: 9, StateMaintenance: 10, StateTimeout: 11, StateComplete: 12,
	StateNew: 13, StatePending: 14, StateImagePrep: 15, StateImage: 16,
	StateMakeProduction: 17, StateToMaintenance: 18, StateReload: 19,
	StateVMHostInUse: 20, StateToVMHostInUse: 21, StateCheckpoint: 24,
	StateRebootSoft: 26, StateReinstall: 27, StateRebootHard: 28,
	StateServerModified: 29,
}

// ValidState reports whether s is a VCL state name.
func ValidState(s string) bool { _, ok := StateIDs[s]; return ok }

// Loadlog names: VCL's computerloadstate.loadstatename values. Detail goes in the
// event's Info, never in new names.
const (
	LoadBegin              = "begin"
	LoadStatusCheck        = "statuscheck"
	LoadImageBlade         = "loadimageblade"
	LoadInfo               = "info"
	LoadDoesImageExist     = "doesimageexists"
	LoadCopyFromPartnerMN  = "copyfrompartnerMN"
	LoadStartLoad          = "startload"
	LoadTransferVM         = "transfervm"
	LoadVMSetupConfig      = "vmsetupconfig"
	LoadStartVM            = "startvm"
	LoadMachineBooted      = "machinebooted"
	LoadDynamicDHCPAddress = "dynamicDHCPaddress"
	LoadStaticIPAddress    = "staticIPaddress"
	LoadImageComplete      = "loadimagecomplete"
	LoadAddingUser         = "addinguser"
	LoadNodeReady          = "nodeready"
	LoadExited             = "exited"
	LoadReserved           = "reserved"
	LoadAcknowledgeTimeout = "acknowledgetimeout"
	LoadNoInitialConnect   = "noinitialconnection"
	LoadPostReserve        = "postreserve"
	LoadConnected          = "connected"
	LoadFailed             = "failed"
	LoadImageFailed        = "loadimagefailed"
	LoadTimeout            = "timeout"
	LoadDeleted            = "deleted"
	LoadWarning            = "WARNING"
)

// LoadEstimates are VCL's computerloadstate.est values (seconds) for the steps that
// have one; the web progress bar and `vclq watch` start from these.
var LoadEstimates = map[string]int{
	LoadStatusCheck: 10, LoadDoesImageExist: 4, LoadStartLoad: 6, LoadTransferVM: 255,
	LoadVMSetupConfig: 2, LoadStartVM: 3, LoadMachineBooted: 68, LoadAddingUser: 18,
}
