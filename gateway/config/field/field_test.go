package field

import (
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestErrorFormat(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "f.yaml", Line: 4, Path: "listeners[0].address", Msg: "bad"}, "f.yaml:4: listeners[0].address: bad"},
		{Error{File: "f.yaml", Path: "registrar", Msg: "needs a store"}, "f.yaml: registrar: needs a store"},
		{Error{Line: 2, Msg: "more than one document"}, "2: more than one document"},
		{Error{Path: "leeway", Msg: "too long"}, "leeway: too long"},
		{Error{Msg: "alone"}, "alone"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%+v: got %q, want %q", tt.e, got, tt.want)
		}
	}
}

func TestErrorsCollectAndNest(t *testing.T) {
	var es Errors
	if es.Err() != nil {
		t.Fatal("an empty Errors is not a nil error")
	}
	es.Add("issuers[0].cluster", "required")
	es.Add("", "configure one key source, got %d", 2)
	es.Add("[1]", "listed twice")
	under := es.Under("authn")
	want := []string{"authn.issuers[0].cluster", "authn", "authn[1]"}
	for i, e := range under {
		if e.Path != want[i] {
			t.Errorf("Under: path %d = %q, want %q", i, e.Path, want[i])
		}
	}
	if es[0].Path != "issuers[0].cluster" {
		t.Errorf("Under changed the original: %q", es[0].Path)
	}
	wrapped := fmt.Errorf("authn: invalid config: %w", under.Err())
	var one *Error
	if !errors.As(wrapped, &one) || one.Path != "authn.issuers[0].cluster" {
		t.Fatalf("errors.As did not reach the first *Error: %v", one)
	}
	if got := From(wrapped); len(got) != 3 || got[1].Msg != "configure one key source, got 2" {
		t.Fatalf("From = %v, want the three problems", got)
	}
	if got := From(errors.New("plain")); len(got) != 1 || got[0].Path != "" || got[0].Msg != "plain" {
		t.Fatalf("From(plain) = %v", got)
	}
	if From(nil) != nil {
		t.Fatal("From(nil) is not nil")
	}
	if got := strings.Count(es.Error(), "\n"); got != 2 {
		t.Fatalf("Errors.Error() has %d line breaks, want one line per problem:\n%s", got, es.Error())
	}
}

func TestDefault(t *testing.T) {
	type duration int64 // a named type, as registrar.Duration is
	d, s, n, keep := time.Duration(0), "", duration(0), 7
	Default(&d, 5*time.Second)
	Default(&s, "json")
	Default(&n, 3)
	Default(&keep, 9)
	if d != 5*time.Second || s != "json" || n != 3 || keep != 7 {
		t.Fatalf("got %v %q %v %v; want zero fields defaulted and set ones kept", d, s, n, keep)
	}
}

// Every config-owning package imports this one, the data plane included: it must stay free of
// anything but the standard library.
func TestImportsOnlyTheStandardLibrary(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s; package field may import the standard library only", name, p)
			}
		}
		checked++
	}
	if checked == 0 {
		t.Fatal("no source file checked")
	}
}
