package harness

import (
	"strings"
	"testing"
)

func TestDocBlock(t *testing.T) {
	doc := "intro\n<!-- e2e:cfg -->\n```yaml\na: \"${A}\"\nb: ${B}\n```\nafter\n<!-- e2e:open -->\n```yaml\nx: 1\n"
	got, err := docBlock(doc, "cfg")
	if err != nil {
		t.Fatal(err)
	}
	if got != "a: \"${A}\"\nb: ${B}\n" {
		t.Fatalf("block %q", got)
	}
	out, err := expandVars(got, map[string]string{"A": "1", "B": "2"})
	if err != nil || out != "a: \"1\"\nb: 2\n" {
		t.Fatalf("expanded %q, %v", out, err)
	}
	for _, c := range []struct {
		name string
		vars map[string]string
		want string
	}{
		{"cfg", map[string]string{"A": "1"}, "no value for [B]"},
		{"cfg", map[string]string{"A": "1", "B": "2", "C": "3"}, "does not use ${C}"},
	} {
		b, _ := docBlock(doc, c.name)
		if _, err := expandVars(b, c.vars); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.vars, err, c.want)
		}
	}
	for name, want := range map[string]string{"none": "no <!-- e2e:none -->", "open": "unterminated"} {
		if _, err := docBlock(doc, name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", name, err, want)
		}
	}
}
