package main

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/logutil"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// etcdServer is an embedded etcd plus the level of its logger.
type etcdServer struct {
	*embed.Etcd
	url   string // client URL, http://127.0.0.1:PORT
	level zap.AtomicLevel
}

// Close stops etcd. Its listeners log every "server closed" at error level
// with a stack trace; those are expected here, so the logger is muted first.
func (e *etcdServer) Close() {
	e.level.SetLevel(zapcore.FatalLevel)
	e.Etcd.Close()
}

// startEtcd runs a single-member etcd inside this process, listening on two
// free loopback ports (client and peer), with its data in dir.
func startEtcd(dir string, verbose bool) (*etcdServer, error) {
	// etcd refuses (or rewrites) a data dir that is not 0700.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	level := zap.NewAtomicLevelAt(zapcore.ErrorLevel)
	if verbose {
		level.SetLevel(zapcore.InfoLevel)
	}
	zcfg := logutil.DefaultZapLoggerConfig
	zcfg.Level = level
	logger, err := zcfg.Build()
	if err != nil {
		return nil, err
	}
	var lastErr error
	// The ports are picked by binding :0 and closing it again, so another
	// process can take one before etcd binds it; retry a few times if so.
	for attempt := 0; attempt < 3; attempt++ {
		clientURL, err := freeLoopbackURL()
		if err != nil {
			return nil, err
		}
		peerURL, err := freeLoopbackURL()
		if err != nil {
			return nil, err
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
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logger)

		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			return &etcdServer{Etcd: e, url: clientURL.String(), level: level}, nil
		case err := <-e.Err():
			e.Close()
			lastErr = err
		case <-time.After(60 * time.Second):
			e.Close()
			return nil, fmt.Errorf("etcd did not become ready within 60s")
		}
	}
	return nil, fmt.Errorf("starting etcd: %w", lastErr)
}

func freeLoopbackURL() (*url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	return &url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}
