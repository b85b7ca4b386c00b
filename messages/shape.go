package messages

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// decodeStrict checks the envelope (size, object, schema version), then the shape of
// the payload against shape (the shapeNode of the Go type of v), then stores the
// decoded payload in v.
//
// encoding/json alone is not strict enough: it matches keys case-insensitively, keeps
// the last of duplicate keys and accepts null for any field (leaving its zero value,
// which can pass validation where the key was required). The shape check walks the
// payload along the type and rejects all of these, so that what the Go decoder accepts
// is exactly what the JSON Schemas under schema/ accept.
//
// A field is required exactly when its json tag has neither omitempty nor omitzero:
// json.Marshal always writes such a field, so anything this package encodes decodes.
// An optional string is omitted when it has no value, never sent as "" (json.Marshal
// omits it too), so that a present field always holds a value that was validated.
//
// The payload is decoded into v first, because json.Unmarshal checks the syntax of the
// whole payload before it stores anything: once it has not reported a syntax error,
// the payload is known to be one valid JSON value, and the schema lookup and the shape
// walk below are plain byte scans that need not handle broken JSON. Errors are still
// reported in this order: size, syntax and object, schema version, shape (the first
// problem in document order), then whatever json.Unmarshal reported.
func decodeStrict(data []byte, v any, shape *shapeNode) error {
	if len(data) > MaxMessageSize {
		return fmt.Errorf("%w: %w: %d bytes, more than %d", ErrInvalid, ErrTooLarge, len(data), MaxMessageSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return invalid("empty payload")
	}
	uerr := json.Unmarshal(data, v)
	// json.Unmarshal returns a *json.SyntaxError exactly when its syntax check of the
	// whole payload (json.Valid's) fails: none of the decoded types has an unmarshaler
	// that returns one (time.Time returns parse errors).
	var syntax *json.SyntaxError
	if errors.As(uerr, &syntax) {
		return invalid("not a JSON object")
	}
	start := skipSpace(data, 0)
	if data[start] != '{' { // null, an array, a string, a number or a boolean
		return invalid("not a JSON object")
	}
	schema, ok := topLevelValue(data, start, "schema")
	if !ok {
		return invalid("missing required field schema")
	}
	if string(schema) != schemaLiteral {
		var v int
		if err := json.Unmarshal(schema, &v); err != nil || v != SchemaVersion {
			return fmt.Errorf("%w: %w: schema %s, this build reads %d", ErrInvalid, ErrSchema, truncate(string(schema), 40), SchemaVersion)
		}
	}
	w := shapeWalker{data: data, pos: start}
	if err := w.value(shape, false); err != nil {
		return err
	}
	if uerr != nil {
		return invalid("%v", uerr)
	}
	return nil
}

var schemaLiteral = strconv.Itoa(SchemaVersion)

var (
	timeType = reflect.TypeFor[time.Time]()
	// timeRe is the RFC 3339 subset on the wire: upper-case T and Z, at most nanoseconds.
	timeRe = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:[0-9]{2})$`)
)

type fieldInfo struct {
	name     string
	typ      reflect.Type
	required bool
}

// fieldsOf lists the JSON fields of a struct type.
func fieldsOf(t reflect.Type) []fieldInfo {
	var fs []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		optional := false
		for _, o := range strings.Split(opts, ",") {
			if o == "omitempty" || o == "omitzero" {
				optional = true
			}
		}
		fs = append(fs, fieldInfo{name: name, typ: f.Type, required: !optional})
	}
	return fs
}

// shapeKind is what JSON a Go type accepts.
type shapeKind uint8

const (
	shapeUnsupported shapeKind = iota
	shapeTime                  // an RFC 3339 string (timeRe)
	shapeString
	shapeBool
	shapeInt // an integer literal: no fraction, no exponent
	shapeSlice
	shapeStruct
)

// shapeNode is the shape of one Go type (a pointer's is its element's), derived once
// from the type by reflection and never modified afterwards.
type shapeNode struct {
	kind     shapeKind
	typ      reflect.Type // for the unsupported type error
	elem     *shapeNode   // of a slice
	fields   []shapeField // of a struct, in declaration order
	required uint64       // of a struct: bit i set when fields[i] is required
}

type shapeField struct {
	name     string
	node     *shapeNode
	optional bool
}

// maxShapeDepth bounds how deep a type nests objects and arrays; the walk's path stack
// is that deep. Payloads may nest deeper: the walk never descends below the type.
const maxShapeDepth = 16

// The shapes of the decoded types, built once at package initialisation.
var (
	requestShape = newShape(reflect.TypeFor[Request]())
	loadlogShape = newShape(reflect.TypeFor[Loadlog]())
	resultShape  = newShape(reflect.TypeFor[Result]())
)

func newShape(t reflect.Type) *shapeNode { return buildShape(t, 0) }

// buildShape builds the shape of t, found depth objects and arrays deep. A type used
// in several places gets a node in each (they are small); a recursive type panics.
func buildShape(t reflect.Type, depth int) *shapeNode {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if depth >= maxShapeDepth {
		panic(fmt.Sprintf("messages: %s nests more than %d deep", t, maxShapeDepth))
	}
	n := &shapeNode{typ: t}
	switch {
	case t == timeType:
		n.kind = shapeTime
	case t.Kind() == reflect.String:
		n.kind = shapeString
	case t.Kind() == reflect.Bool:
		n.kind = shapeBool
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		n.kind = shapeInt
	case t.Kind() == reflect.Slice:
		n.kind = shapeSlice
		n.elem = buildShape(t.Elem(), depth+1)
	case t.Kind() == reflect.Struct:
		n.kind = shapeStruct
		fs := fieldsOf(t)
		if len(fs) > 64 {
			panic(fmt.Sprintf("messages: %s has more than 64 JSON fields", t))
		}
		for i, f := range fs {
			for _, g := range fs[:i] {
				if g.name == f.name {
					panic(fmt.Sprintf("messages: %s has two fields named %q", t, f.name))
				}
			}
			n.fields = append(n.fields, shapeField{name: f.name, node: buildShape(f.typ, depth+1), optional: !f.required})
			if f.required {
				n.required |= 1 << i
			}
		}
	}
	return n
}

// isSpace reports JSON white space.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(data []byte, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// stringEnd returns the index after the string starting at data[i] ('"') of a valid
// JSON payload, and whether the string holds an escape.
func stringEnd(data []byte, i int) (end int, escaped bool) {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '"':
			return i + 1, escaped
		case '\\':
			escaped = true
			i++ // the escaped character; \uXXXX's digits are plain bytes
		}
	}
	return i, escaped
}

// valueEnd returns the index after the value starting at data[i] of a valid JSON
// payload. It does not recurse: nesting only moves a counter.
func valueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		end, _ := stringEnd(data, i)
		return end
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i, _ = stringEnd(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	}
	for i < len(data) && !isSpace(data[i]) && data[i] != ',' && data[i] != '}' && data[i] != ']' {
		i++
	}
	return i
}

// keyIs reports whether the JSON string raw (with its quotes) decodes to name.
func keyIs(raw []byte, escaped bool, name string) bool {
	if !escaped {
		return string(raw[1:len(raw)-1]) == name
	}
	return unquote(raw) == name
}

// unquote decodes the JSON string raw (with its quotes) as encoding/json does (invalid
// UTF-8 and lone surrogates become U+FFFD).
func unquote(raw []byte) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

// topLevelValue returns the value of the last member named key of the object starting
// at data[start] of a valid JSON payload, as json.Unmarshal into a map would.
func topLevelValue(data []byte, start int, key string) (value []byte, found bool) {
	i := skipSpace(data, start+1)
	for i < len(data) && data[i] == '"' {
		end, escaped := stringEnd(data, i)
		match := keyIs(data[i:end], escaped, key)
		i = skipSpace(data, end)
		i = skipSpace(data, i+1) // ':'
		end = valueEnd(data, i)
		if match {
			value, found = data[i:end], true
		}
		i = skipSpace(data, end)
		if i < len(data) && data[i] == ',' {
			i = skipSpace(data, i+1)
		}
	}
	return value, found
}

// shapeWalker checks a valid JSON payload against a shapeNode, in one pass, without
// recursing deeper than the type nests. It allocates nothing unless it finds a problem.
type shapeWalker struct {
	data  []byte
	pos   int
	depth int
	path  [maxShapeDepth]pathElem
}

// pathElem is a field name or, for an array element, an index.
type pathElem struct {
	name  string
	index int
}

func (w *shapeWalker) push(e pathElem) { w.path[w.depth] = e; w.depth++ }
func (w *shapeWalker) pop()            { w.depth-- }

// pathString is the field path of the value being checked, such as users[0].ssh_keys[1]
// ("" for the payload itself).
func (w *shapeWalker) pathString() string {
	var b strings.Builder
	for _, e := range w.path[:w.depth] {
		if e.name == "" {
			fmt.Fprintf(&b, "[%d]", e.index)
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(e.name)
	}
	return b.String()
}

func (w *shapeWalker) errorf(format string, args ...any) error {
	return shapeErr(w.pathString(), format, args...)
}

// valueKind names the JSON type of the value starting with c.
func valueKind(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// value checks the value at w.pos (no white space before it) and moves past it.
func (w *shapeWalker) value(n *shapeNode, optional bool) error {
	data := w.data
	c := data[w.pos]
	if c == 'n' {
		return w.errorf("null is not allowed")
	}
	switch n.kind {
	case shapeTime:
		if c != '"' {
			return w.errorf("want an RFC 3339 time string, got %s", valueKind(c))
		}
		end, escaped := stringEnd(data, w.pos)
		raw := data[w.pos:end]
		if escaped {
			if s := unquote(raw); !timeRe.MatchString(s) {
				return w.errorf("%q is not an RFC 3339 time like 2026-11-24T10:00:00Z", truncate(s, 40))
			}
		} else if !timeRe.Match(raw[1 : len(raw)-1]) {
			return w.errorf("%q is not an RFC 3339 time like 2026-11-24T10:00:00Z", truncate(unquote(raw), 40))
		}
		w.pos = end
		return nil
	case shapeString:
		if c != '"' {
			return w.errorf("want a string, got %s", valueKind(c))
		}
		end, _ := stringEnd(data, w.pos)
		if optional && end == w.pos+2 { // an escape never decodes to nothing
			return w.errorf("an optional string is omitted, never empty")
		}
		w.pos = end
		return nil
	case shapeBool:
		if c != 't' && c != 'f' {
			return w.errorf("want a boolean, got %s", valueKind(c))
		}
		w.pos = valueEnd(data, w.pos)
		return nil
	case shapeInt:
		if c != '-' && (c < '0' || c > '9') {
			return w.errorf("want an integer, got %s", valueKind(c))
		}
		end := valueEnd(data, w.pos)
		if num := data[w.pos:end]; bytes.ContainsAny(num, ".eE") {
			return w.errorf("want an integer literal, got %s", truncate(string(num), 40))
		}
		w.pos = end
		return nil
	case shapeSlice:
		if c != '[' {
			return w.errorf("want an array, got %s", valueKind(c))
		}
		w.pos = skipSpace(data, w.pos+1)
		for i := 0; data[w.pos] != ']'; i++ {
			w.push(pathElem{index: i})
			if err := w.value(n.elem, false); err != nil {
				return err
			}
			w.pop()
			w.pos = skipSpace(data, w.pos)
			if data[w.pos] == ',' {
				w.pos = skipSpace(data, w.pos+1)
			}
		}
		w.pos++
		return nil
	case shapeStruct:
		if c != '{' {
			return w.errorf("want an object, got %s", valueKind(c))
		}
		return w.object(n)
	}
	return w.errorf("unsupported Go type %s", n.typ)
}

func (w *shapeWalker) object(n *shapeNode) error {
	data := w.data
	var seen uint64
	next := 0 // fields usually come in declaration order: try that one first
	w.pos = skipSpace(data, w.pos+1)
	for data[w.pos] != '}' {
		end, escaped := stringEnd(data, w.pos)
		raw := data[w.pos:end]
		key := raw[1 : len(raw)-1] // no allocation: compared as string(key)
		if escaped {
			key = []byte(unquote(raw))
		}
		fi := -1
		if next < len(n.fields) && string(key) == n.fields[next].name {
			fi = next
		} else {
			for i := range n.fields {
				if string(key) == n.fields[i].name {
					fi = i
					break
				}
			}
		}
		if fi < 0 {
			return invalid("unknown field %q in %s", truncate(unquote(raw), 40), orPayload(w.pathString()))
		}
		f := &n.fields[fi]
		if seen&(1<<fi) != 0 {
			return invalid("duplicate field %s", joinPath(w.pathString(), f.name))
		}
		seen |= 1 << fi
		next = fi + 1
		w.pos = skipSpace(data, end)
		w.pos = skipSpace(data, w.pos+1) // ':'
		w.push(pathElem{name: f.name})
		if err := w.value(f.node, f.optional); err != nil {
			return err
		}
		w.pop()
		w.pos = skipSpace(data, w.pos)
		if data[w.pos] == ',' {
			w.pos = skipSpace(data, w.pos+1)
		}
	}
	w.pos++
	if missing := n.required &^ seen; missing != 0 {
		for i, f := range n.fields {
			if missing&(1<<i) != 0 {
				return invalid("missing required field %s", joinPath(w.pathString(), f.name))
			}
		}
	}
	return nil
}

func shapeErr(path, format string, args ...any) error {
	if path == "" {
		path = "payload"
	}
	return invalid("%s: "+format, append([]any{path}, args...)...)
}

func orPayload(path string) string {
	if path == "" {
		return "payload"
	}
	return path
}
