package messages

// GoPatterns exposes the source of every validation regexp to the black-box tests,
// which check that the JSON Schemas use exactly the same patterns.
var GoPatterns = map[string]string{
	"label":     labelRe.String(),
	"hostname":  hostnameRe.String(),
	"mac":       macRe.String(),
	"username":  usernameRe.String(),
	"imageName": imageNameRe.String(),
	"absPath":   absPathRe.String(),
	"dsPath":    dsPathRe.String(),
	"dsName":    dsNameRe.String(),
	"switch":    switchNameRe.String(),
	"osName":    osNameRe.String(),
	"worker":    workerRe.String(),
	"errorCode": errorCodeRe.String(),
	"sealed":    sealedRe.String(),
	"sshKey":    sshKeyRe.String(),
	"time":      timeRe.String(),
}
