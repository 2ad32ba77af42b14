package registrar

import (
	"errors"
	"fmt"
	"strconv"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// renderYAML renders the JSON of an object (json.Marshal's output: fields in struct order, map
// keys sorted) as the object's YAML file: apiVersion and kind first, then the object in block
// style, as `kubectl get -o yaml` shows it. It is a straight streaming conversion: 7-9 us and
// 3 KB per WorkloadEntry with its json.Marshal (BenchmarkRenderYAML), against 250 us and 184 KB
// through yaml.v3, which marshals into a node tree, re-parses it and runs its emitter. The
// json and yaml tags of the types are the same, so the file decodes with DecodeObject into what
// json.Unmarshal makes of the record.
//
// Strings are plain when that cannot be read as anything else (no leading or trailing space, no
// indicator, not a number, bool or null in YAML 1.1 or 1.2), otherwise double-quoted with
// escapes; timestamps are quoted strings, which time.Time reads as text.
func renderYAML(dst []byte, apiVersion, kind string, js []byte) ([]byte, error) {
	dst = append(dst, "apiVersion: "...)
	dst = appendScalarString(dst, apiVersion)
	dst = append(dst, "\nkind: "...)
	dst = appendScalarString(dst, kind)
	dst = append(dst, '\n')
	r := yamlRenderer{in: js, out: dst}
	r.ws()
	if r.peek() != '{' {
		return nil, errors.New("render YAML: the record is not a JSON object")
	}
	if r.empty() {
		r.pos += 2
	} else if err := r.mapping(0, false); err != nil {
		return nil, err
	}
	r.ws()
	if r.pos != len(r.in) {
		return nil, fmt.Errorf("render YAML: trailing data at offset %d of the record", r.pos)
	}
	return r.out, nil
}

// maxSimpleKey is the longest key written as `key: value`; a longer one is written as an
// explicit key (`? key` then `: value`), as yaml.v3 does: YAML caps implicit keys at 1024
// characters.
const maxSimpleKey = 128

type yamlRenderer struct {
	in      []byte
	pos     int
	out     []byte
	scratch []byte // a decoded JSON string
}

func (r *yamlRenderer) ws() {
	for r.pos < len(r.in) {
		switch r.in[r.pos] {
		case ' ', '\t', '\n', '\r':
			r.pos++
		default:
			return
		}
	}
}

func (r *yamlRenderer) peek() byte {
	if r.pos < len(r.in) {
		return r.in[r.pos]
	}
	return 0
}

// empty reports whether the container at pos is {} or [] (json.Marshal writes no spaces).
func (r *yamlRenderer) empty() bool {
	return r.pos+1 < len(r.in) && (r.in[r.pos+1] == '}' || r.in[r.pos+1] == ']')
}

func (r *yamlRenderer) pad(indent int) {
	for range indent {
		r.out = append(r.out, ' ')
	}
}

func (r *yamlRenderer) errorf(what string) error {
	return fmt.Errorf("render YAML: %s at offset %d of the record", what, r.pos)
}

// mapping writes the non-empty object at pos, its keys at indent; inline: the first key goes
// on the current line (after "- ").
func (r *yamlRenderer) mapping(indent int, inline bool) error {
	r.pos++ // {
	for i := 0; ; i++ {
		r.ws()
		if r.peek() != '"' {
			return r.errorf("expected a key")
		}
		if i > 0 || !inline {
			r.pad(indent)
		}
		if err := r.decodeStr(); err != nil {
			return err
		}
		start := len(r.out)
		r.out = appendScalar(r.out, r.scratch)
		if len(r.out)-start > maxSimpleKey {
			r.out = append(r.out[:start], '?', ' ')
			r.out = appendScalar(r.out, r.scratch)
			r.out = append(r.out, '\n')
			r.pad(indent)
		}
		r.ws()
		if r.peek() != ':' {
			return r.errorf("expected ':'")
		}
		r.pos++
		r.out = append(r.out, ':')
		if err := r.member(indent); err != nil {
			return err
		}
		if end, err := r.next('}'); end || err != nil {
			return err
		}
	}
}

// member writes a mapping value after "key:".
func (r *yamlRenderer) member(indent int) error {
	r.ws()
	switch c := r.peek(); {
	case (c == '{' || c == '[') && r.empty():
		r.out = append(r.out, ' ', c, c+2) // {} or []
		r.pos += 2
		r.out = append(r.out, '\n')
	case c == '{':
		r.out = append(r.out, '\n')
		return r.mapping(indent+2, false)
	case c == '[':
		r.out = append(r.out, '\n')
		return r.sequence(indent+2, false)
	default:
		r.out = append(r.out, ' ')
		if err := r.scalar(); err != nil {
			return err
		}
		r.out = append(r.out, '\n')
	}
	return nil
}

// sequence writes the non-empty array at pos, its items at indent.
func (r *yamlRenderer) sequence(indent int, inline bool) error {
	r.pos++ // [
	for i := 0; ; i++ {
		r.ws()
		if i > 0 || !inline {
			r.pad(indent)
		}
		r.out = append(r.out, '-', ' ')
		var err error
		switch c := r.peek(); {
		case (c == '{' || c == '[') && r.empty():
			r.out = append(r.out, c, c+2, '\n')
			r.pos += 2
		case c == '{':
			err = r.mapping(indent+2, true)
		case c == '[':
			err = r.sequence(indent+2, true)
		default:
			if err = r.scalar(); err == nil {
				r.out = append(r.out, '\n')
			}
		}
		if err != nil {
			return err
		}
		if end, err := r.next(']'); end || err != nil {
			return err
		}
	}
}

// next passes the ',' after a member or an item (end false) or the container's closing c.
func (r *yamlRenderer) next(c byte) (end bool, err error) {
	r.ws()
	switch r.peek() {
	case ',':
		r.pos++
		return false, nil
	case c:
		r.pos++
		return true, nil
	}
	return false, r.errorf("expected ',' or '" + string(c) + "'")
}

// scalar writes the string, number, bool or null at pos.
func (r *yamlRenderer) scalar() error {
	if r.peek() == '"' {
		return r.str()
	}
	start := r.pos
	for r.pos < len(r.in) {
		c := r.in[r.pos]
		if c == ',' || c == '}' || c == ']' || c == ' ' || c == '\n' || c == '\t' || c == '\r' {
			break
		}
		r.pos++
	}
	tok := r.in[start:r.pos]
	switch {
	case len(tok) == 0:
		return r.errorf("expected a value")
	case string(tok) == "true", string(tok) == "false", string(tok) == "null":
	case tok[0] == '-' || tok[0] >= '0' && tok[0] <= '9':
		for _, c := range tok {
			if !(c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E') {
				return r.errorf("bad number")
			}
		}
	default:
		return r.errorf("unexpected token")
	}
	r.out = append(r.out, tok...)
	return nil
}

// str writes the JSON string at pos as a YAML scalar.
func (r *yamlRenderer) str() error {
	if err := r.decodeStr(); err != nil {
		return err
	}
	r.out = appendScalar(r.out, r.scratch)
	return nil
}

// decodeStr decodes the JSON string at pos into scratch.
func (r *yamlRenderer) decodeStr() error {
	r.pos++ // "
	start := r.pos
	// Fast path: no escapes.
	for r.pos < len(r.in) && r.in[r.pos] != '"' && r.in[r.pos] != '\\' {
		r.pos++
	}
	r.scratch = append(r.scratch[:0], r.in[start:r.pos]...)
	for {
		if r.pos >= len(r.in) {
			return r.errorf("unterminated string")
		}
		c := r.in[r.pos]
		if c == '"' {
			r.pos++
			break
		}
		if c != '\\' {
			r.scratch = append(r.scratch, c)
			r.pos++
			continue
		}
		if r.pos+1 >= len(r.in) {
			return r.errorf("unterminated escape")
		}
		r.pos += 2
		switch e := r.in[r.pos-1]; e {
		case '"', '\\', '/':
			r.scratch = append(r.scratch, e)
		case 'b':
			r.scratch = append(r.scratch, '\b')
		case 'f':
			r.scratch = append(r.scratch, '\f')
		case 'n':
			r.scratch = append(r.scratch, '\n')
		case 'r':
			r.scratch = append(r.scratch, '\r')
		case 't':
			r.scratch = append(r.scratch, '\t')
		case 'u':
			ru, ok := r.hex4()
			if !ok {
				return r.errorf("bad \\u escape")
			}
			if utf16.IsSurrogate(ru) {
				lo := rune(-1)
				if r.pos+1 < len(r.in) && r.in[r.pos] == '\\' && r.in[r.pos+1] == 'u' {
					r.pos += 2
					if lo, ok = r.hex4(); !ok {
						return r.errorf("bad \\u escape")
					}
				}
				ru = utf16.DecodeRune(ru, lo) // U+FFFD unless a valid pair, as encoding/json does
			}
			r.scratch = utf8.AppendRune(r.scratch, ru)
		default:
			return r.errorf("bad escape")
		}
	}
	return nil
}

func (r *yamlRenderer) hex4() (rune, bool) {
	if r.pos+4 > len(r.in) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(r.in[r.pos:r.pos+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	r.pos += 4
	return rune(v), true
}

func appendScalarString(dst []byte, s string) []byte { return appendScalar(dst, []byte(s)) }

// appendScalar writes s plain when a YAML 1.1 or 1.2 reader can only read it as that string,
// double-quoted otherwise.
func appendScalar(dst, s []byte) []byte {
	if plainSafe(s) {
		return append(dst, s...)
	}
	return appendQuoted(dst, s)
}

// plainSafe is deliberately narrow: what it refuses is quoted, which is always correct.
func plainSafe(s []byte) bool {
	if len(s) == 0 || s[len(s)-1] == ' ' || s[len(s)-1] == ':' {
		return false
	}
	c := s[0]
	switch {
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		if len(s) <= 5 && reservedWord(s) {
			return false
		}
	case c == '/' || c == '_':
	case c >= '0' && c <= '9':
		// An address is the only string starting with a digit written plain; numbers,
		// timestamps, sexagesimals and versions like 1.2 are quoted.
		return dottedQuad(s)
	case c >= utf8.RuneSelf:
	default:
		return false
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			ru, n := utf8.DecodeRune(s[i:])
			if ru == utf8.RuneError || !(unicode.IsLetter(ru) || unicode.IsDigit(ru)) {
				return false
			}
			i += n
			continue
		}
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '.', c == '_', c == '/', c == '@', c == '+', c == '=', c == '%', c == '~', c == ',':
		case c == ':':
			if s[i+1] == ' ' { // never the last byte (checked above)
				return false
			}
		case c == ' ':
			if s[i+1] == ' ' || s[i+1] == '#' || s[i+1] == '-' {
				return false
			}
		default:
			return false
		}
		i++
	}
	return true
}

// reservedWord reports the words YAML 1.1 reads as a bool or null (case as YAML lists them;
// any case is refused, to be safe).
func reservedWord(s []byte) bool {
	var b [5]byte
	for i, c := range s {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	switch string(b[:len(s)]) {
	case "y", "n", "yes", "no", "true", "false", "on", "off", "null":
		return true
	}
	return false
}

// dottedQuad reports whether s is four dot-separated groups of 1-3 digits (an IPv4 address).
func dottedQuad(s []byte) bool {
	groups, digits := 1, 0
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
			if digits > 3 {
				return false
			}
		case c == '.':
			if digits == 0 {
				return false
			}
			groups, digits = groups+1, 0
		default:
			return false
		}
	}
	return groups == 4 && digits > 0
}

const hexDigits = "0123456789ABCDEF"

// appendQuoted writes s as a YAML double-quoted scalar, escaping what a YAML reader would not
// take as it is (controls, DEL, C1 controls, line and paragraph separators, BOM, non-characters).
func appendQuoted(dst, s []byte) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
			default:
				dst = append(dst, c)
			}
			continue
		}
		ru, n := utf8.DecodeRune(s[i:])
		switch {
		case ru == utf8.RuneError && n == 1: // not UTF-8 (json.Marshal never writes it)
			dst = append(dst, "\\uFFFD"...)
		case ru <= 0x9f:
			dst = append(dst, '\\', 'x', hexDigits[ru>>4], hexDigits[ru&15])
		case ru == 0x2028 || ru == 0x2029 || ru == 0xFEFF || ru == 0xFFFE || ru == 0xFFFF:
			dst = append(dst, '\\', 'u')
			for sh := 12; sh >= 0; sh -= 4 {
				dst = append(dst, hexDigits[ru>>sh&15])
			}
		default:
			dst = append(dst, s[i:i+n]...)
		}
		i += n
	}
	return append(dst, '"')
}
