// Command kube-apiserver is the upstream Kubernetes API server, built from the k8s.io/kubernetes
// module at the version pinned in e2e/go.mod. The e2e peer fetcher builds it into the peer cache
// with the version stamped through -ldflags (without it the server reports v0.0.0-master).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
