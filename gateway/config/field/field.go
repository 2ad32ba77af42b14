// Package field is what every section of ewgate's configuration file shares: the error that
// names a field (Error, collected in Errors) and the rule that a zero field takes its default
// (Default).
//
// Each section's package (authn, registrar, vmcontrol, dataplane) validates its own section and
// reports paths relative to it; package config, which reads the whole file, puts each section's
// errors under the section's key (Errors.Under) and fills in the file and the line from the YAML
// node the path leads to. Nobody parses an error's text to find its field.
//
// The package imports only the standard library (a test checks it), so that any package may use
// it, the data plane included, without linking anything else.
//
//	var errs field.Errors
//	errs.Add("upstreams[0].address", "%q is not host:port", addr)
//	return errs.Err() // nil when errs is empty
package field

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Error is one problem in a configuration: where it is and what is wrong.
// CannotRead starts the message of every error about a file the config names that cannot be
// read (missing, no permission): `ewgate check --offline`, which lints a config away from the
// host it is for, leaves exactly these out.
const CannotRead = "cannot read: "

// IsCannotRead reports whether e is about a file that cannot be read.
func (e *Error) IsCannotRead() bool { return strings.HasPrefix(e.Msg, CannotRead) }

type Error struct {
	// File is the file's name as given to the loader; empty outside a file.
	File string
	// Line is 1-based, filled in by the loader from the YAML node Path leads to (or from the
	// decoder); zero when unknown, for example for a required key the file leaves out.
	Line int
	// Path is the field, such as listeners[0].address; relative to its section until the
	// loader puts it under the section's key. Empty for a problem of the whole file.
	Path string
	// Msg says what is wrong and what is allowed.
	Msg string
}

// Error formats the problem as FILE:LINE: PATH: MSG, leaving out what is unknown.
func (e *Error) Error() string {
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

// Errors is every problem found, returned as a whole so that an operator fixes them in one round.
type Errors []*Error

// Add records a problem at path.
func (es *Errors) Add(path, format string, args ...any) {
	*es = append(*es, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Err returns es as an error, or nil when it holds no problem. Return it rather than es from
// a function whose result is an error: a nil Errors in an error interface is not a nil error.
func (es Errors) Err() error {
	if len(es) == 0 {
		return nil
	}
	return es
}

// Error lists the problems one per line.
func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap lets errors.As and errors.Is reach each *Error.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// Under returns copies of es with each path put under prefix (a section's key, such as authn):
// issuers[0].cluster becomes authn.issuers[0].cluster, and an empty path becomes prefix.
func (es Errors) Under(prefix string) Errors {
	out := make(Errors, len(es))
	for i, e := range es {
		c := *e
		c.Path = Join(prefix, e.Path)
		out[i] = &c
	}
	return out
}

// Join appends path to prefix with a dot, unless either is empty or path is an index ([2]).
func Join(prefix, path string) string {
	switch {
	case prefix == "":
		return path
	case path == "":
		return prefix
	case strings.HasPrefix(path, "["):
		return prefix + path
	}
	return prefix + "." + path
}

// From returns err's problems: the Errors or *Error it holds, or one Error with err's text and
// no path for any other error. It returns nil for a nil err.
func From(err error) Errors {
	var es Errors
	if errors.As(err, &es) {
		return es
	}
	var e *Error
	if errors.As(err, &e) {
		return Errors{e}
	}
	if err != nil {
		return Errors{{Msg: err.Error()}}
	}
	return nil
}

// Default sets *v to def when *v is the zero value, the one rule by which every optional field
// of the file takes its default (zero means "the default", never a setting of its own).
func Default[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
