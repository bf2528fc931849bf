//go:build tools

// Package tools pins what `make cluster-tools` builds; the binaries come from `go build k8s.io/kubernetes/cmd/...`.
package tools
