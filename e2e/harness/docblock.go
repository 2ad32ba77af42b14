package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// DocBlock returns the fenced code block that follows the marker `<!-- e2e:<name> -->` in
// docs/<doc> of the repository, with every ${VAR} replaced from vars. A scenario that runs a
// configuration the operator's docs show reads it from the doc, so the doc cannot drift from what
// is tested. It fails t if the marker or its block is missing, or if the block names a variable
// vars does not give (or vars gives one the block does not use: a renamed placeholder).
func DocBlock(t testing.TB, doc, name string, vars map[string]string) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("harness: doc block: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", doc))
	if err != nil {
		t.Fatalf("harness: doc block: %v", err)
	}
	block, err := docBlock(string(b), name)
	if err != nil {
		t.Fatalf("harness: docs/%s: %v", doc, err)
	}
	out, err := expandVars(block, vars)
	if err != nil {
		t.Fatalf("harness: docs/%s block %s: %v", doc, name, err)
	}
	return out
}

func docBlock(doc, name string) (string, error) {
	marker := "<!-- e2e:" + name + " -->"
	i := strings.Index(doc, marker)
	if i < 0 {
		return "", fmt.Errorf("no %s", marker)
	}
	if strings.Contains(doc[i+len(marker):], marker) {
		return "", fmt.Errorf("%s appears twice", marker)
	}
	rest := strings.TrimLeft(doc[i+len(marker):], "\n")
	if !strings.HasPrefix(rest, "```") {
		return "", fmt.Errorf("%s is not followed by a fenced block", marker)
	}
	nl := strings.IndexByte(rest, '\n')
	if nl < 0 {
		return "", fmt.Errorf("%s: unterminated block", marker)
	}
	body := rest[nl+1:]
	end := strings.Index(body, "\n```")
	if end < 0 {
		return "", fmt.Errorf("%s: unterminated block", marker)
	}
	return body[:end+1], nil
}

var docVar = regexp.MustCompile(`\$\{([A-Z0-9_]+)\}`)

func expandVars(s string, vars map[string]string) (string, error) {
	var missing, used []string
	out := docVar.ReplaceAllStringFunc(s, func(m string) string {
		k := m[2 : len(m)-1]
		v, ok := vars[k]
		if !ok {
			missing = append(missing, k)
			return m
		}
		used = append(used, k)
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("no value for %v", missing)
	}
	for k := range vars {
		if !slices.Contains(used, k) {
			return "", fmt.Errorf("the block does not use ${%s}", k)
		}
	}
	return out, nil
}

// repoRoot is the repository the e2e module lives in (e2e/go.mod's parent).
func repoRoot() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(filepath.Dir(strings.TrimSpace(string(gomod)))), nil
}
