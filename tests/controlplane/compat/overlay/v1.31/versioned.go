package main

// Kubernetes v1.31's kube-apiserver options (see ../../../versioned.go for the
// pinned release's): the component-globals registry is a package global the
// command registers the kube component in before building its options, and
// Complete takes no context.

import (
	"context"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	utilversion "k8s.io/apiserver/pkg/util/version"

	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func newRunOptions() *options.ServerRunOptions {
	utilversion.DefaultComponentGlobalsRegistry.ComponentGlobalsOrRegister(
		utilversion.DefaultKubeComponent, utilversion.DefaultBuildEffectiveVersion(), utilfeature.DefaultMutableFeatureGate)
	return options.NewServerRunOptions()
}

func settleGlobals(*options.ServerRunOptions) error {
	return utilversion.DefaultComponentGlobalsRegistry.Set()
}

func complete(_ context.Context, s *options.ServerRunOptions) (options.CompletedOptions, error) {
	return s.Complete()
}

func runServer(ctx context.Context, opts options.CompletedOptions) error {
	return app.Run(ctx, opts)
}
