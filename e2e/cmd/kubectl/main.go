//go:build e2e_kubectl

// Command kubectl is the upstream kubectl, built from the k8s.io/kubernetes module at the version
// pinned in e2e/go.mod. The e2e peer fetcher builds it (with -tags e2e_kubectl) only when no kubectl
// is on the PATH; the tag keeps `go test ./...` from compiling kubectl for nothing.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
