//go:build tools

// The control plane of the end-to-end tests, built from the k8s.io/kubernetes
// module (tests/k8s/build.sh): this file keeps its commands in go.mod.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
