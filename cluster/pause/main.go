// Command pause is the first process of a pod sandbox, standing in for registry.k8s.io/pause on a
// node that cannot pull images. It holds the pod's namespaces by staying alive, reaps the orphans
// the kernel hands to PID 1 (so none is left a zombie), and exits 0 on SIGTERM or SIGINT.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set when cluster/build builds it (-X main.version=...).
var version = "dev"

const usage = "usage: pause [-v]  (runs until SIGTERM or SIGINT, reaping orphaned children)"

func main() {
	for _, arg := range os.Args[1:] {
		switch arg {
		case "-v", "-version", "--version":
			fmt.Println("pause", version)
			return
		case "-h", "-help", "--help":
			fmt.Println(usage)
			return
		default:
			fmt.Fprintf(os.Stderr, "pause: unknown argument %q; %s\n", arg, usage)
			os.Exit(2)
		}
	}
	// Buffered: a signal that arrives while the loop is busy is kept, and one SIGCHLD may stand
	// for several exits, which is why reap waits until no child is left to collect.
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		fmt.Fprintf(os.Stderr, "pause: %v, shutting down\n", sig)
		os.Exit(0)
	}
}

// reap collects every child that has exited, without blocking.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return // no exited child left (0), or no child at all (ECHILD)
		}
	}
}
