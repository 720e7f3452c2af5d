// Command streampipe-node runs the node-side and controller components of
// the test cluster, one per process, like the hyperkube binary Kubernetes
// shipped until 1.19: one build and one link serve all of them.
//
//	streampipe-node kubelet ...                  k8s.io/kubernetes/cmd/kubelet
//	streampipe-node kube-controller-manager ...  k8s.io/kubernetes/cmd/kube-controller-manager
//	streampipe-node kube-scheduler ...           k8s.io/kubernetes/cmd/kube-scheduler
//	streampipe-node kube-proxy ...               k8s.io/kubernetes/cmd/kube-proxy
//	streampipe-node cluster-dns ...              the cluster's DNS (see dns.go)
//
// Each subcommand takes exactly the flags of the upstream command of that
// name (it is the upstream cobra command), so its documentation applies.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"

	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var commands = map[string]func() *cobra.Command{
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kube-proxy":              proxy.NewProxyCommand,
	"cluster-dns":             newDNSCommand,
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: streampipe-node kubelet|kube-controller-manager|kube-scheduler|kube-proxy|cluster-dns [FLAGS]")
		os.Exit(2)
	}
	command := commands[os.Args[1]]()
	command.SetArgs(os.Args[2:])
	os.Exit(cli.Run(command))
}
