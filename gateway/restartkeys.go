package gateway

import (
	"reflect"
	"strings"

	"github.com/ewgate/ewgate/gateway/config"
)

// restartOnly are the top-level sections a reload does not apply: the components they configure
// are built once, at start (the admin servers, the file watcher, the relay engine, the xDS
// client, the built-in control plane and CA, authn, the VM control endpoint, the registrar and
// its stores). log.format too (the logger is built before the config is served); log.level
// follows reloads.
var restartOnly = []string{"log.format", "admin", "reload", "relay", "xds", "control_plane", "authn", "control", "registrar", "kubernetes"}

// restartKeys returns the keys of restart-only settings whose value in next differs from the
// running one (running: the config the gateway started with, which is what those components
// still use), one level below the section where the section is a struct in both files
// ("admin.address", "xds.address"), the section itself when it was added or removed
// ("authn").
func restartKeys(running, next *config.File) []string {
	var keys []string
	a, b := reflect.ValueOf(running).Elem(), reflect.ValueOf(next).Elem()
	for _, path := range restartOnly {
		va, vb := fieldByKey(a, path), fieldByKey(b, path)
		keys = append(keys, diffKeys(path, va, vb, 1)...)
	}
	return keys
}

// fieldByKey follows a dotted path of yaml keys from v (a struct); pointers are followed, a nil
// one ends the walk with the nil pointer.
func fieldByKey(v reflect.Value, path string) reflect.Value {
	for _, k := range strings.Split(path, ".") {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return v
			}
			v = v.Elem()
		}
		f, ok := structFieldByKey(v, k)
		if !ok {
			panic("gateway: restartOnly names an unknown key " + path) // caught by TestRestartKeys
		}
		v = f
	}
	return v
}

func structFieldByKey(v reflect.Value, key string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name == key && t.Field(i).IsExported() {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// diffKeys compares a and b; where both are structs (through pointers) and depth > 0 it names
// the changed keys below path, else path itself.
func diffKeys(path string, a, b reflect.Value, depth int) []string {
	if reflect.DeepEqual(a.Interface(), b.Interface()) {
		return nil
	}
	if a.Kind() == reflect.Pointer {
		if a.IsNil() || b.IsNil() {
			return []string{path}
		}
		a, b = a.Elem(), b.Elem()
	}
	if depth == 0 || a.Kind() != reflect.Struct {
		return []string{path}
	}
	var keys []string
	t := a.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if !t.Field(i).IsExported() || name == "-" {
			continue
		}
		if name == "" { // inline or untagged: report under the section
			if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
				keys = append(keys, path)
			}
			continue
		}
		keys = append(keys, diffKeys(path+"."+name, a.Field(i), b.Field(i), depth-1)...)
	}
	if len(keys) == 0 { // differs only in unexported or untagged state
		return []string{path}
	}
	return dedupe(keys)
}

func dedupe(keys []string) []string {
	out := keys[:0]
	seen := map[string]bool{}
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}
