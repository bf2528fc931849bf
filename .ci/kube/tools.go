//go:build tools

// Package tools pins what `make cluster-tools` (and `make node-tools`: the kubelet) builds; the binaries come from
// `go build k8s.io/kubernetes/cmd/...`.
package tools
