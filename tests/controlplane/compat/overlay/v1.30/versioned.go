package main

// Kubernetes v1.30's kube-apiserver options (see ../../../versioned.go for the
// pinned release's): no component-globals registry yet (feature gates are
// the global utilfeature gate), and Complete takes no context.

import (
	"context"

	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func newRunOptions() *options.ServerRunOptions {
	return options.NewServerRunOptions()
}

func settleGlobals(*options.ServerRunOptions) error {
	return nil
}

func complete(_ context.Context, s *options.ServerRunOptions) (options.CompletedOptions, error) {
	return s.Complete()
}

// v1.30's Run takes a stop channel, not a context.
func runServer(ctx context.Context, opts options.CompletedOptions) error {
	return app.Run(opts, ctx.Done())
}
