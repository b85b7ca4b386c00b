// Package messages defines vclq's wire contract: the versioned JSON requests that
// arrive on the vcl.* subjects, the loadlog and result events published on
// vcl.events.*, every subject, stream, consumer and KV bucket name, and the strict
// patterns every externally supplied value must match before anything acts on it.
//
// Decoding is strict (unknown, case-folded or duplicate keys, missing required fields,
// null, wrong types, oversize payloads, trailing data and unknown schema versions are
// errors) and validation reports every bad field at once, wrapped in ErrInvalid. A JSON
// Schema (draft 2020-12) per request kind and event is embedded (Schema, SchemaNames);
// docs/messages.md documents every field. Nothing that passes validation can carry shell
// metacharacters in a hostname, username, image name, path or SSH key.
package messages
