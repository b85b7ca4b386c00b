package streams

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Difference is one field of an existing asset that is not what the definitions say.
type Difference struct {
	// Asset names the stream, consumer or bucket: "stream VCL_REQUESTS",
	// "consumer VCL_REQUESTS > vclq-workers", "bucket vclq_slots".
	Asset string
	// Field is the field's JSON name, as in deployments/jetstream: "num_replicas".
	Field string
	// Found is the asset's value, Expected the definitions'.
	Found, Expected string
	// Applied: Apply updated the asset to Expected. Converge never does.
	Applied bool
}

func (d Difference) String() string {
	if d.Field == Missing {
		return d.Asset + ": missing"
	}
	outcome := "left as is"
	if d.Applied {
		outcome = "updated"
	}
	return fmt.Sprintf("%s: %s is %s, expected %s (%s)", d.Asset, d.Field, d.Found, d.Expected, outcome)
}

// Replicas is the field that names the replica count in every asset's config.
const Replicas = "num_replicas"

// compareConfigs lists the fields in which found differs from expected, two configs
// of the same struct type, by their JSON names. A field expected to be zero with
// `omitempty` is the server's to choose (a default it fills in) and is not compared;
// nor are the fields named in skip.
func compareConfigs(asset string, found, expected any, skip ...string) []Difference {
	fv, ev := reflect.ValueOf(found), reflect.ValueOf(expected)
	t := ev.Type()
	var diffs []Difference
	for i := range t.NumField() {
		name, omitempty := jsonName(t.Field(i))
		if name == "" || slices.Contains(skip, name) {
			continue
		}
		f, e := fv.Field(i), ev.Field(i)
		if e.IsZero() && (omitempty || f.IsZero()) {
			continue
		}
		if sameValue(f, e) {
			continue
		}
		diffs = append(diffs, Difference{Asset: asset, Field: name, Found: show(f), Expected: show(e)})
	}
	return diffs
}

// jsonName is a struct field's JSON name ("" for unexported or `json:"-"` fields)
// and whether it is omitted when empty.
func jsonName(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	tag := f.Tag.Get("json")
	if tag == "-" {
		return "", false
	}
	name, opts, _ := strings.Cut(tag, ",")
	if name == "" {
		name = f.Name
	}
	return name, strings.Contains(","+opts+",", ",omitempty,")
}

// sameValue compares two field values; empty slices and maps equal nil ones.
func sameValue(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Slice, reflect.Map:
		if a.Len() == 0 && b.Len() == 0 {
			return true
		}
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// show renders a field value for a Difference: durations as "1m0s", pointers by
// what they point to.
func show(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "none"
		}
		v = v.Elem()
	}
	if d, ok := v.Interface().(time.Duration); ok {
		return d.String()
	}
	if v.Kind() == reflect.Struct {
		return fmt.Sprintf("%+v", v.Interface())
	}
	return fmt.Sprint(v.Interface())
}
