package messages

// The Token-based shape check that decodeStrict used before its single-pass
// replacement, kept verbatim (renamed) as the reference for the differential tests in
// shape_diff_test.go. Do not "fix" it: it defines the behaviour to keep.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// refDecodeStrict checks the envelope (size, object, schema version), then the shape of
// the payload against the Go type of v, then decodes it into v.
//
// encoding/json alone is not strict enough: it matches keys case-insensitively, keeps
// the last of duplicate keys and accepts null for any field (leaving its zero value,
// which can pass validation where the key was required). The shape check walks the
// token stream along the type and rejects all of these, so that what the Go decoder
// accepts is exactly what the JSON Schemas under schema/ accept.
//
// A field is required exactly when its json tag has neither omitempty nor omitzero:
// json.Marshal always writes such a field, so anything this package encodes decodes.
// An optional string is omitted when it has no value, never sent as "" (json.Marshal
// omits it too), so that a present field always holds a value that was validated.
func refDecodeStrict(data []byte, v any) error {
	if err := refCheckEnvelope(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := refCheckShape(dec, reflect.TypeOf(v).Elem(), "", false); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("trailing data after the JSON object")
	}
	return refStrictUnmarshal(data, v)
}

func refCheckShape(dec *json.Decoder, t reflect.Type, path string, optional bool) error {
	tok, err := dec.Token()
	if err != nil {
		return shapeErr(path, "not valid JSON: %v", err)
	}
	if tok == nil {
		return shapeErr(path, "null is not allowed")
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == timeType:
		str, ok := tok.(string)
		if !ok {
			return shapeErr(path, "want an RFC 3339 time string, got %s", refTokenKind(tok))
		}
		if !timeRe.MatchString(str) {
			return shapeErr(path, "%q is not an RFC 3339 time like 2026-11-24T10:00:00Z", truncate(str, 40))
		}
		return nil
	case t.Kind() == reflect.String:
		str, ok := tok.(string)
		if !ok {
			return shapeErr(path, "want a string, got %s", refTokenKind(tok))
		}
		if optional && str == "" {
			return shapeErr(path, "an optional string is omitted, never empty")
		}
		return nil
	case t.Kind() == reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return shapeErr(path, "want a boolean, got %s", refTokenKind(tok))
		}
		return nil
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		n, ok := tok.(json.Number)
		if !ok {
			return shapeErr(path, "want an integer, got %s", refTokenKind(tok))
		}
		if strings.ContainsAny(string(n), ".eE") {
			return shapeErr(path, "want an integer literal, got %s", truncate(string(n), 40))
		}
		return nil
	case t.Kind() == reflect.Slice:
		if d, ok := tok.(json.Delim); !ok || d != '[' {
			return shapeErr(path, "want an array, got %s", refTokenKind(tok))
		}
		for i := 0; dec.More(); i++ {
			if err := refCheckShape(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i), false); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil { // ]
			return shapeErr(path, "not valid JSON: %v", err)
		}
		return nil
	case t.Kind() == reflect.Struct:
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return shapeErr(path, "want an object, got %s", refTokenKind(tok))
		}
		fields := fieldsOf(t)
		seen := make(map[string]bool, len(fields))
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return shapeErr(path, "not valid JSON: %v", err)
			}
			key, _ := kt.(string)
			var f *fieldInfo
			for i := range fields {
				if fields[i].name == key {
					f = &fields[i]
				}
			}
			if f == nil {
				return invalid("unknown field %q in %s", truncate(key, 40), orPayload(path))
			}
			if seen[key] {
				return invalid("duplicate field %s", joinPath(path, key))
			}
			seen[key] = true
			if err := refCheckShape(dec, f.typ, joinPath(path, key), !f.required); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil { // }
			return shapeErr(path, "not valid JSON: %v", err)
		}
		for _, f := range fields {
			if f.required && !seen[f.name] {
				return invalid("missing required field %s", joinPath(path, f.name))
			}
		}
		return nil
	}
	return shapeErr(path, "unsupported Go type %s", t)
}

func refTokenKind(tok json.Token) string {
	switch x := tok.(type) {
	case json.Delim:
		if x == '{' {
			return "an object"
		}
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}
func refCheckEnvelope(data []byte) error {
	if len(data) > MaxMessageSize {
		return fmt.Errorf("%w: %w: %d bytes, more than %d", ErrInvalid, ErrTooLarge, len(data), MaxMessageSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return invalid("empty payload")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return invalid("not a JSON object")
	}
	schema, ok := top["schema"]
	if !ok {
		return invalid("missing required field schema")
	}
	var v int
	if err := json.Unmarshal(schema, &v); err != nil || v != SchemaVersion {
		return fmt.Errorf("%w: %w: schema %s, this build reads %d", ErrInvalid, ErrSchema, truncate(string(schema), 40), SchemaVersion)
	}
	return nil
}

func refStrictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid("%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalid("trailing data after the JSON object")
	}
	return nil
}
