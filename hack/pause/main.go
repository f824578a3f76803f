// Command pause is the sandbox ("pause") container of the local cluster:
// it holds a pod's namespaces open and exits on SIGINT or SIGTERM. Built
// here because no registry is reachable to pull the usual one.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "--version" || os.Args[1] == "-v") {
		os.Stdout.WriteString("pause (comet-operator local cluster)\n")
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
