package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// Load reads, decodes, defaults and validates the file at path. A valid file's risky settings
// are in the returned File's Warnings, for the caller to log or print.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes, defaults and validates data; name is used in error messages. It returns every
// problem of the file at once, as field.Errors in the order of the file: the keys no section
// knows and the values of the wrong type (which the decoder reports), then what validation finds
// in the rest, each with its field path and line.
func Parse(data []byte, name string) (*File, error) { return parse(data, name, false) }

// LoadOffline is Load for a file checked away from the host it is for (`ewgate check
// --offline`, CI linting shipped configs): everything is checked except that the files it
// names exist and can be read. Load makes no network calls either way.
func LoadOffline(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(data, path, true)
}

func parse(data []byte, name string, offline bool) (*File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var te *yaml.TypeError
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) && !errors.As(err, &te) {
		return nil, syntaxError(err, name) // the file is not YAML: nothing further can be read
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root) // it decoded above, so it parses
	idx := indexNodes(&root)
	var decoded field.Errors
	if te != nil {
		decoded = idx.decodeErrors(te)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		// Only the first document is read; its problems are reported with this one.
		decoded = append(decoded, &field.Error{Line: max(extra.Line, 1), Msg: "more than one YAML document; ewgate reads exactly one"})
	}
	errs := decoded
	// A field the decoder could not fill is left zero and takes its default, so validation goes
	// on with the rest of the file; what it says about a field the decoder already reported (the
	// zero value it sees there) is left out.
	f.SetDefaults()
	for _, e := range f.Validate() {
		if !slices.ContainsFunc(decoded, func(d *field.Error) bool { return under(e.Path, d.Path) }) {
			errs = append(errs, e)
		}
	}
	for _, e := range append(errs, f.Warnings...) {
		e.File = name
		if e.Line == 0 {
			e.Line = idx.lineOf(e.Path)
		}
	}
	if offline {
		errs = slices.DeleteFunc(errs, (*field.Error).IsCannotRead)
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b *field.Error) int { return a.Line - b.Line })
		return nil, errs
	}
	return &f, nil
}

// under reports whether path is dir or a field inside it.
func under(path, dir string) bool {
	if dir == "" || !strings.HasPrefix(path, dir) {
		return false
	}
	rest := path[len(dir):]
	return rest == "" || rest[0] == '.' || rest[0] == '['
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// syntaxError is the one error of a file that is not YAML.
func syntaxError(err error, name string) error {
	e := &field.Error{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	if g := yamlLine.FindStringSubmatch(err.Error()); g != nil {
		e.Line, _ = strconv.Atoi(g[1])
		e.Msg = g[2]
	}
	return field.Errors{e}
}

var (
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	badValue     = regexp.MustCompile(`^cannot unmarshal !!(\w+)(?: ` + "`" + `(.*)` + "`" + `)? into (\S+)$`)
)

// decodeErrors turns the decoder's messages ("line 3: field foo not found in type
// dataplane.Listener") into field errors with the line, the field path and a message in the
// file's own terms. The decoder reports only a line, so the path is the one of the key or value
// on that line that the message names.
func (x *nodeIndex) decodeErrors(te *yaml.TypeError) field.Errors {
	var errs field.Errors
	for _, m := range te.Errors {
		e := &field.Error{Msg: m}
		g := yamlLine.FindStringSubmatch(m)
		if g == nil {
			errs = append(errs, e)
			continue
		}
		e.Line, _ = strconv.Atoi(g[1])
		e.Msg = g[2]
		switch u, v := unknownField.FindStringSubmatch(g[2]), badValue.FindStringSubmatch(g[2]); {
		case u != nil:
			e.Path = x.keyPath(e.Line, u[1])
			e.Msg = fmt.Sprintf("unknown key %q (see docs/config.md for the keys allowed here)", u[1])
		case v != nil:
			var value string
			e.Path, value = x.valuePath(e.Line, v[1], v[2])
			e.Msg = badValueMsg(v[1], value, v[3])
		default: // a section's own type refused the value (registrar durations)
			e.Path, _ = x.valuePath(e.Line, "", "")
		}
		errs = append(errs, e)
	}
	return errs
}

func badValueMsg(tag, value, goType string) string {
	want := goType
	switch {
	case goType == "time.Duration":
		want = "a duration such as 5s, 1m30s or 1h"
	case strings.HasPrefix(goType, "[]"):
		want = "a list"
	case strings.HasPrefix(goType, "map["), strings.Contains(goType, ".") && !strings.HasPrefix(goType, "*"):
		want = "a mapping of keys (see docs/config.md)"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		want = "a whole number"
	case strings.HasPrefix(goType, "float"):
		want = "a number"
	case goType == "bool":
		want = "true or false"
	case goType == "string":
		want = "a string"
	}
	if value == "" && (tag == "seq" || tag == "map") {
		what := map[string]string{"seq": "a list", "map": "a mapping"}[tag]
		return fmt.Sprintf("%s is not valid here: want %s", what, want)
	}
	return fmt.Sprintf("%q is not valid here: want %s", value, want)
}
