// Command pause holds a pod sandbox's namespaces open for the test kubelet, like Kubernetes'
// registry.k8s.io/pause, which cannot be pulled here. It waits for SIGTERM or SIGINT and, as PID 1
// of a shared PID namespace, reaps orphaned children so they never linger as zombies.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// One SIGCHLD may stand for several exits: collect every one that is ready.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
