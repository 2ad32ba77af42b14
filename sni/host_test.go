package sni

import (
	"errors"
	"strings"
	"testing"
)

func TestValidHostPattern(t *testing.T) {
	tests := []struct {
		p  string
		ok bool
	}{
		{"app.example.com", true},
		{"App.Example.COM.", true},
		{"localhost", true},
		{"*.example.com", true},
		{"*.com", true},
		{"*.Example.com.", true},
		{"", false},
		{".", false},
		{"*", false},
		{"*.", false},
		{"*.*.example.com", false},
		{"**.example.com", false},
		{"*app.example.com", false},
		{"app.*.example.com", false},
		{"app.example.*", false},
		{"app..example.com", false},
		{".example.com", false},
		{"app.example.com..", false},
		{"-app.example.com", false},
		{"app_1.example.com", false},
		{"app example.com", false},
		{"app.example.com/", false},
		{strings.Repeat("a", 64) + ".com", false},
	}
	for _, tt := range tests {
		err := ValidHostPattern(tt.p)
		if tt.ok && err != nil {
			t.Errorf("ValidHostPattern(%q) = %v, want nil", tt.p, err)
		}
		if !tt.ok && !errors.Is(err, ErrBadHostPattern) {
			t.Errorf("ValidHostPattern(%q) = %v, want ErrBadHostPattern", tt.p, err)
		}
	}
}

func TestMatchHost(t *testing.T) {
	tests := []struct {
		pattern, host string
		want          bool
	}{
		{"app.example.com", "app.example.com", true},
		{"app.example.com", "APP.Example.com", true},
		{"App.Example.com", "app.example.com", true},
		{"app.example.com.", "app.example.com", true},
		{"app.example.com", "app.example.com.", true},
		{"app.example.com", "app.example.co", false},
		{"app.example.com", "xapp.example.com", false},
		{"app.example.com", "a.app.example.com", false},
		{"app.example.com", "", false},
		{"", "", false},

		{"*.example.com", "a.example.com", true},
		{"*.example.com", "a.b.example.com", true},
		{"*.example.com", "A.Example.COM", true},
		{"*.example.com.", "a.example.com", true},
		{"*.example.com", "a.example.com.", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "a..example.com", false},
		{"*.example.com", "..example.com", false},
		{"*.example.com", "aexample.com", false},
		{"*.example.com", "a.example.com.evil", false},
		{"*.example.com", "a.badexample.com", false},
		{"*.example.com", "a.example.org", false},
		{"*.example.com", "", false},
		{"*", "a.example.com", false},
		{"*.", "a.example.com", false},
	}
	for _, tt := range tests {
		if got := MatchHost(tt.pattern, tt.host); got != tt.want {
			t.Errorf("MatchHost(%q, %q) = %v, want %v", tt.pattern, tt.host, got, tt.want)
		}
	}
}
