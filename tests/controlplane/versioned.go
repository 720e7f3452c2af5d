package main

// The calls into kube-apiserver whose signatures changed
// between releases, kept here so `make compat` (compat/build.sh) can swap
// this one file for an older release's (compat/overlay/<minor>/versioned.go).
// This is the pinned release's (v1.35); v1.37 builds with it as it is.

import (
	"context"

	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func newRunOptions() *options.ServerRunOptions {
	return options.NewServerRunOptions()
}

// settleGlobals settles feature gates and the effective version, as the
// kube-apiserver command's PersistentPreRunE does.
func settleGlobals(s *options.ServerRunOptions) error {
	return s.GenericServerRunOptions.ComponentGlobalsRegistry.Set()
}

func complete(ctx context.Context, s *options.ServerRunOptions) (options.CompletedOptions, error) {
	return s.Complete(ctx)
}

// runServer serves until ctx is cancelled, then shuts down gracefully.
func runServer(ctx context.Context, opts options.CompletedOptions) error {
	return app.Run(ctx, opts)
}
