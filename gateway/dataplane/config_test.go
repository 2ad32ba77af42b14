package dataplane

import "testing"

func TestRoutesFromXDS(t *testing.T) {
	tests := []struct {
		kind, from string
		want       bool
	}{
		{KindMesh, RoutesXDS, true},
		{KindMesh, RoutesStatic, false},
		{KindMesh, "", false},
		{KindIngress, RoutesXDS, false}, // refused at load; never treated as an xDS listener
		{KindIngress, "", false},
	}
	for _, tt := range tests {
		l := Listener{Kind: tt.kind, RoutesFrom: tt.from}
		if got := l.RoutesFromXDS(); got != tt.want {
			t.Errorf("kind %q routes_from %q: RoutesFromXDS() = %v, want %v", tt.kind, tt.from, got, tt.want)
		}
	}
}
