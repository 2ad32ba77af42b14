package sni

import (
	"errors"
	"strings"
	"testing"
)

func TestParseIstioName(t *testing.T) {
	const reviews = "reviews.default.svc.cluster.local"
	tests := []struct {
		in      string
		want    IstioName
		wantErr bool
		canon   string // String() of the result; "" means in itself
	}{
		{in: "outbound_.9080_._." + reviews, want: IstioName{Outbound, 9080, "", reviews}},
		{in: "outbound_.9080_.v2_." + reviews, want: IstioName{Outbound, 9080, "v2", reviews}},
		{in: "outbound_.1_.a-b-1_.x", want: IstioName{Outbound, 1, "a-b-1", "x"}},
		{in: "outbound_.65535_._.a.b", want: IstioName{Outbound, 65535, "", "a.b"}},
		{in: "inbound_.15443_._." + reviews, want: IstioName{Inbound, 15443, "", reviews}},
		{in: "OUTBOUND_.9080_.V2_.Reviews.Default.SVC.cluster.local", want: IstioName{Outbound, 9080, "v2", reviews}, canon: "outbound_.9080_.v2_." + reviews},
		{in: "outbound_.9080_._." + reviews + ".", want: IstioName{Outbound, 9080, "", reviews}, canon: "outbound_.9080_._." + reviews},

		{in: "", wantErr: true},
		{in: reviews, wantErr: true},
		{in: "outbound", wantErr: true},
		{in: "outbound_.9080", wantErr: true},
		{in: "outbound_.9080_._", wantErr: true},
		{in: "outbound_.9080_._.", wantErr: true},
		{in: "outbound_.9080_.v2", wantErr: true},
		{in: "sideways_.9080_._." + reviews, wantErr: true},
		{in: "outbound|9080||" + reviews, wantErr: true}, // the Envoy cluster form, not the SNI form
		{in: "outbound_.0_._." + reviews, wantErr: true},
		{in: "outbound_.65536_._." + reviews, wantErr: true},
		{in: "outbound_.99999999999999999999_._." + reviews, wantErr: true},
		{in: "outbound_.-1_._." + reviews, wantErr: true},
		{in: "outbound_.+80_._." + reviews, wantErr: true},
		{in: "outbound_.080_._." + reviews, wantErr: true},
		{in: "outbound_._._." + reviews, wantErr: true},
		{in: "outbound_.80a_._." + reviews, wantErr: true},
		{in: "outbound_.9080_.-v2_." + reviews, wantErr: true},
		{in: "outbound_.9080_.v.2_." + reviews, wantErr: true},
		{in: "outbound_.9080_.v2_.*.example.com", wantErr: true},
		{in: "outbound_.9080_.v2_.a..b", wantErr: true},
		{in: "outbound_.9080_.v2_.a_b.c", wantErr: true},
		{in: "outbound_.9080_.v2_.a b", wantErr: true},
		{in: "outbound_.9080_._." + strings.Repeat("a", 64), wantErr: true},
		{in: "outbound_.9080_._." + strings.Repeat("a.", 127) + "a", wantErr: true}, // 255 bytes
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseIstioName(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrNotIstioName) {
					t.Fatalf("err = %v, want ErrNotIstioName", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			canon := tt.canon
			if canon == "" {
				canon = tt.in
			}
			if s := got.String(); s != canon {
				t.Fatalf("String() = %q, want %q", s, canon)
			}
			if again, err := ParseIstioName(got.String()); err != nil || again != got {
				t.Fatalf("round trip: %+v, %v", again, err)
			}
		})
	}
}

func TestOutboundName(t *testing.T) {
	tests := []struct {
		port         int
		subset, host string
		want         string
	}{
		{9080, "", "reviews.default.svc.cluster.local", "outbound_.9080_._.reviews.default.svc.cluster.local"},
		{9080, "v2", "reviews.default.svc.cluster.local", "outbound_.9080_.v2_.reviews.default.svc.cluster.local"},
		{443, "V1", "API.Example.com.", "outbound_.443_.v1_.api.example.com"},
	}
	for _, tt := range tests {
		got := OutboundName(tt.port, tt.subset, tt.host)
		if got != tt.want {
			t.Errorf("OutboundName(%d, %q, %q) = %q, want %q", tt.port, tt.subset, tt.host, got, tt.want)
		}
		n, err := ParseIstioName(got)
		if err != nil || n.Direction != Outbound || n.Port != tt.port {
			t.Errorf("ParseIstioName(%q) = %+v, %v", got, n, err)
		}
	}
}

func TestHasIstioALPN(t *testing.T) {
	tests := []struct {
		alpn []string
		want bool
	}{
		{nil, false},
		{[]string{}, false},
		{[]string{"h2", "http/1.1"}, false},
		{[]string{"istio-h3"}, false},
		{[]string{"ISTIO"}, false}, // protocol ids are compared byte for byte (RFC 7301)
		{[]string{"h2", "istio"}, true},
		{[]string{"istio-peer-exchange", "istio"}, true},
		{[]string{"istio-http/1.0"}, true},
		{[]string{"istio-http/1.1"}, true},
		{[]string{"istio-h2"}, true},
	}
	for _, tt := range tests {
		if got := HasIstioALPN(tt.alpn); got != tt.want {
			t.Errorf("HasIstioALPN(%q) = %v, want %v", tt.alpn, got, tt.want)
		}
	}
	for _, p := range IstioALPNs {
		if !HasIstioALPN([]string{p}) {
			t.Errorf("HasIstioALPN misses %q from IstioALPNs", p)
		}
	}
	if len(IstioALPNs) != 5 {
		t.Errorf("IstioALPNs = %q, want Istio's five", IstioALPNs)
	}
}
