package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// startEtcd runs a single-member etcd inside this process, listening on two
// free loopback ports (client and peer), with its data in dir.
func startEtcd(dir string, verbose bool) (*embed.Etcd, string, error) {
	// etcd refuses (or rewrites) a data dir that is not 0700.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", err
	}
	var lastErr error
	// The ports are picked by binding :0 and closing it again, so another
	// process can take one before etcd binds it; retry a few times if so.
	for attempt := 0; attempt < 3; attempt++ {
		clientURL, err := freeLoopbackURL()
		if err != nil {
			return nil, "", err
		}
		peerURL, err := freeLoopbackURL()
		if err != nil {
			return nil, "", err
		}

		cfg := embed.NewConfig()
		cfg.Name = "controlplane"
		cfg.Dir = dir
		cfg.ListenClientUrls = []url.URL{*clientURL}
		cfg.AdvertiseClientUrls = []url.URL{*clientURL}
		cfg.ListenPeerUrls = []url.URL{*peerURL}
		cfg.AdvertisePeerUrls = []url.URL{*peerURL}
		// The default InitialCluster names the default peer URL
		// (localhost:2380); it must name the peer URL chosen above.
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		// Test data: losing it on a power cut is fine, and fsync makes
		// every write slow on small CI disks.
		cfg.UnsafeNoFsync = true
		cfg.Logger = "zap"
		cfg.LogOutputs = []string{"stderr"}
		cfg.LogLevel = "error"
		if verbose {
			cfg.LogLevel = "info"
		}

		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			return e, clientURL.String(), nil
		case err := <-e.Err():
			e.Close()
			lastErr = err
		case <-time.After(60 * time.Second):
			e.Close()
			return nil, "", fmt.Errorf("etcd did not become ready within 60s")
		}
	}
	return nil, "", fmt.Errorf("starting etcd: %w", lastErr)
}

func freeLoopbackURL() (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	return &url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}
