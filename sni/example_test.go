package sni_test

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/ewgate/ewgate/sni"
)

func ExamplePeek() {
	client, server := net.Pipe()
	defer server.Close()
	done := make(chan struct{})
	go func() { // a sidecar dialing through the east-west gateway
		defer close(done)
		cfg := &tls.Config{
			ServerName:         "outbound_.9080_.v2_.reviews.default.svc.cluster.local",
			NextProtos:         []string{"istio-peer-exchange", "istio"},
			InsecureSkipVerify: true,
		}
		tls.Client(client, cfg).Handshake() // fails when the example closes the pipe
		client.Close()
	}()

	hello, peeked, err := sni.Peek(server, sni.PeekOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	name, err := sni.ParseIstioName(hello.ServerName)
	fmt.Println(name.Direction, name.Port, name.Subset, name.Host, err)
	fmt.Println(sni.HasIstioALPN(hello.ALPN), len(peeked) > 0)
	server.Close()
	<-done
	// Output:
	// outbound 9080 v2 reviews.default.svc.cluster.local <nil>
	// true true
}

func ExampleMatchHost() {
	fmt.Println(sni.ValidHostPattern("*.example.com"))
	fmt.Println(sni.MatchHost("*.example.com", "api.eu.Example.com."))
	fmt.Println(sni.MatchHost("*.example.com", "example.com"))
	// Output:
	// <nil>
	// true
	// false
}

func ExampleOutboundName() {
	fmt.Println(sni.OutboundName(9080, "", "reviews.default.svc.cluster.local"))
	// Output: outbound_.9080_._.reviews.default.svc.cluster.local
}
