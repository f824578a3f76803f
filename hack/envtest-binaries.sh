#!/usr/bin/env bash
# The binaries envtest runs, etcd and kube-apiserver, built from Go module
# sources and cached by version (see k8s-binaries.sh). Prints their folder:
#
#   KUBEBUILDER_ASSETS=$(hack/envtest-binaries.sh) go test ./...
exec "$(dirname "$0")/k8s-binaries.sh" etcd kube-apiserver
