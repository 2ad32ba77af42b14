package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// FieldError is one problem in the file: where it is and what is wrong.
type FieldError struct {
	File string // file name as given to Load, may be empty
	Line int    // 1-based; zero when the field is absent from the file (a missing required key)
	Path string // field path, e.g. listeners[0].address
	Msg  string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	if e.Line > 0 {
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteByte(':')
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one file. It is returned as a whole so that an operator fixes
// them in one round.
type Errors []*FieldError

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Load reads, decodes, defaults and validates the file at path. A valid file's risky settings
// are in the returned File's Warnings, for the caller to log or print.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes, defaults and validates data; name is used in error messages.
func Parse(data []byte, name string) (*File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, decodeError(err, name)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &FieldError{File: name, Msg: "more than one YAML document; ewgate reads exactly one"}
	}
	f.SetDefaults()
	errs := f.Validate()
	if len(errs) > 0 || len(f.Warnings) > 0 {
		var root yaml.Node
		_ = yaml.Unmarshal(data, &root) // it decoded above, so it parses
		for _, e := range append(errs, f.Warnings...) {
			e.File = name
			e.Line = lineOf(&root, e.Path)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &f, nil
}

var yamlLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// decodeError turns yaml's errors ("yaml: unmarshal errors:\n  line 3: field foo not found in type
// config.Listener") into FieldErrors with the line and a message in the file's own terms.
func decodeError(err error, name string) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return &FieldError{File: name, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var errs Errors
	for _, m := range te.Errors {
		fe := &FieldError{File: name, Msg: m}
		if g := yamlLine.FindStringSubmatch(m); g != nil {
			fe.Line, _ = strconv.Atoi(g[1])
			fe.Msg = friendlier(g[2])
		}
		errs = append(errs, fe)
	}
	return errs
}

var (
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	badValue     = regexp.MustCompile(`^cannot unmarshal !!\w+ ` + "`" + `(.*)` + "`" + ` into (\S+)$`)
)

func friendlier(m string) string {
	if g := unknownField.FindStringSubmatch(m); g != nil {
		return fmt.Sprintf("unknown key %q (see docs/config.md for the keys allowed here)", g[1])
	}
	if g := badValue.FindStringSubmatch(m); g != nil {
		want := g[2]
		switch {
		case want == "time.Duration":
			want = "a duration such as 5s, 1m30s or 1h"
		case strings.HasPrefix(want, "[]"):
			want = "a list"
		case strings.HasPrefix(want, "int") || strings.HasPrefix(want, "uint"):
			want = "a whole number"
		case want == "bool":
			want = "true or false"
		}
		return fmt.Sprintf("%q is not valid here: want %s", g[1], want)
	}
	return m
}

// lineOf finds the line of a field path such as listeners[1].routes[0].cluster in the parsed
// document; it returns the line of the deepest node it reaches, so an error on a missing key
// points at the object that lacks it.
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	for _, part := range splitPath(path) {
		next := child(n, part)
		if next == nil {
			break
		}
		n = next
		line = n.Line
	}
	return line
}

func splitPath(path string) []string {
	var parts []string
	for _, seg := range strings.Split(path, ".") {
		for seg != "" {
			i := strings.IndexByte(seg, '[')
			if i < 0 {
				parts = append(parts, seg)
				break
			}
			if i > 0 {
				parts = append(parts, seg[:i])
			}
			j := strings.IndexByte(seg, ']')
			if j < i {
				break
			}
			parts = append(parts, seg[i:j+1])
			seg = seg[j+1:]
		}
	}
	return parts
}

func child(n *yaml.Node, part string) *yaml.Node {
	if strings.HasPrefix(part, "[") {
		i, err := strconv.Atoi(strings.Trim(part, "[]"))
		if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
			return nil
		}
		return n.Content[i]
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == part {
			return n.Content[i+1]
		}
	}
	return nil
}
