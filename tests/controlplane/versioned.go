package main

// The three calls into kube-apiserver's options whose signatures changed
// between releases, kept here so `make compat` (compat/build.sh) can swap
// this one file for an older release's (compat/overlay/<minor>/versioned.go).
// This is the pinned release's (v1.35; also v1.33 and newer).

import (
	"context"

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
