package messages

import (
	"embed"
	"fmt"
	"strings"
)

//go:embed schema/*.schema.json
var schemaFS embed.FS

// SchemaNames lists the JSON Schemas (draft 2020-12) of the wire contract:
// "request-<kind>" for every kind, "loadlog" and "result".
func SchemaNames() []string {
	names := make([]string, 0, len(Kinds)+2)
	for _, k := range Kinds {
		names = append(names, "request-"+string(k))
	}
	return append(names, "loadlog", "result")
}

// Schema returns the JSON Schema named name (one of SchemaNames; a ".schema.json"
// suffix is accepted). The schemas mirror DecodeRequest, DecodeLoadlog and
// DecodeResult field by field and pattern by pattern; a few cross-field rules (see
// docs/messages.md) are checked by the Go decoder only, which is the authority.
func Schema(name string) ([]byte, error) {
	name = strings.TrimSuffix(name, ".schema.json")
	for _, n := range SchemaNames() {
		if n == name {
			return schemaFS.ReadFile("schema/" + n + ".schema.json")
		}
	}
	return nil, fmt.Errorf("messages: no schema %q", name)
}
