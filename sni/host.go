package sni

import (
	"errors"
	"fmt"
	"strings"
)

// ErrBadHostPattern is returned by ValidHostPattern.
var ErrBadHostPattern = errors.New("sni: invalid host pattern")

// ValidHostPattern checks an ingress host pattern: an exact DNS name ("app.example.com") or a
// wildcard "*." followed by a DNS name ("*.example.com"). Case does not matter and a trailing dot
// is ignored. A bare "*", a "*" inside a label ("*app.example.com") or past the first label
// ("app.*.example.com") is rejected.
func ValidHostPattern(p string) error {
	s := strings.ToLower(strings.TrimSuffix(p, "."))
	s = strings.TrimPrefix(s, "*.")
	if !isDNSName(s) {
		return fmt.Errorf("%w: %q: want a DNS name, optionally preceded by \"*.\"", ErrBadHostPattern, p)
	}
	return nil
}

// MatchHost reports whether host matches pattern, case-insensitively and ignoring a trailing dot on
// either. "*.example.com" matches one or more labels before ".example.com" ("a.example.com",
// "a.b.example.com") but not "example.com" itself. It does not validate pattern (use
// ValidHostPattern at configuration time) and does not allocate.
func MatchHost(pattern, host string) bool {
	pattern = strings.TrimSuffix(pattern, ".")
	host = strings.TrimSuffix(host, ".")
	if suffix, ok := strings.CutPrefix(pattern, "*"); ok {
		// suffix is ".example.com": host needs a non-empty prefix of whole labels before it.
		if len(suffix) < 2 || suffix[0] != '.' || len(host) <= len(suffix) {
			return false
		}
		prefix := host[:len(host)-len(suffix)]
		return strings.EqualFold(host[len(prefix):], suffix) &&
			prefix[0] != '.' && prefix[len(prefix)-1] != '.' && !strings.Contains(prefix, "..")
	}
	return pattern != "" && strings.EqualFold(pattern, host)
}
