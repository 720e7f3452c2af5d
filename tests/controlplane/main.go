// Command streampipe-controlplane runs a real Kubernetes control plane for
// tests: kube-apiserver and a single-member etcd, both in this process, on
// loopback ports. There is no kubelet, scheduler or controller-manager, so
// nothing runs Pods, garbage-collects owned objects or finishes namespace
// deletion; the API server itself (validation, CRDs, admission, RBAC,
// watches) is the real one.
//
// Contract used by the test fixtures:
//
//	streampipe-controlplane --kubeconfig PATH [--data-dir DIR] [--address IP] [--port N]
//	    [--node-name NAME --components-dir DIR] [--ready-file PATH] [-v N]
//
// With --node-name the API server serves a whole cluster (tests/cluster): it
// listens on --address (the node's address on the pod network, so pods reach
// it through the "kubernetes" Service), authorizes that node's kubelet with
// the Node authorizer, and writes a kubeconfig per component (kubelet,
// kube-controller-manager, kube-scheduler, kube-proxy, cluster-dns) into
// --components-dir, each with its own identity. The components themselves
// run from the streampipe-node binary (node/).
//
// When the server is ready it writes an admin kubeconfig to PATH, writes the
// ready file (JSON {"kubeconfig","server","pid"}) if asked, and prints one line
// "ready kubeconfig=PATH server=URL" to stdout (paths made absolute). SIGTERM or
// SIGINT shuts down the API server, then etcd, removes the ready file (and the
// data dir if it was a temporary one) and exits 0; the kubeconfig is left in
// place. Any failure exits non-zero (2 for bad usage).
//
// A restart is a stop and a start with the same --data-dir and --port: etcd's
// data, the serving certificate and CA, the admin token and the
// service-account signing key are all kept in the data dir and reused, so the
// kubeconfig written before and ServiceAccount tokens minted before still
// work, and every object is still there. Without --data-dir each start is
// fresh.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
)

const readyTimeout = 2 * time.Minute

func main() {
	log.SetFlags(0)
	log.SetPrefix("streampipe-controlplane: ")

	kubeconfig := flag.String("kubeconfig", "", "where to write the admin kubeconfig (required)")
	dataDir := flag.String("data-dir", "", "etcd data, certificates and tokens, reused by the next start on it (default: a temporary dir removed on exit)")
	address := flag.String("address", "127.0.0.1", "the address kube-apiserver listens on and advertises")
	port := flag.Int("port", 0, "kube-apiserver's port (0: a free one); give the same one to restart on a --data-dir")
	nodeName := flag.String("node-name", "", "serve a one-node cluster whose kubelet registers as this node")
	componentsDir := flag.String("components-dir", "", "with --node-name: where to write the components' kubeconfigs")
	readyFile := flag.String("ready-file", "", `written once ready: JSON {"kubeconfig","server","pid"}`)
	verbosity := flag.Int("v", 0, "log verbosity of kube-apiserver (klog) and etcd; 0 logs errors only")
	flag.Parse()
	if *kubeconfig == "" || flag.NArg() > 0 || *port < 0 || *port > 65535 || (*nodeName == "") != (*componentsDir == "") {
		flag.Usage()
		os.Exit(2)
	}
	setupLogging(*verbosity)
	cfg := serverConfig{address: *address, port: *port, nodeName: *nodeName}
	os.Exit(run(*kubeconfig, *dataDir, cfg, *componentsDir, *readyFile, *verbosity))
}

// setupLogging keeps kube-apiserver's klog output to errors unless -v is given:
// at the default level it logs hundreds of informational lines at start-up.
// Two or three error lines at start-up are normal upstream behaviour here:
// "Failed to ensure lease exists" and "Error while syncing ConfigMap" (controllers
// racing the creation of kube-system, they retry) and "Found stale data, removed
// previous endpoints" (always logged with --endpoint-reconciler-type=none).
func setupLogging(v int) {
	var fs flag.FlagSet
	klog.InitFlags(&fs)
	if v > 0 {
		fs.Set("v", strconv.Itoa(v))
		return
	}
	// Not logging to stderr means logging to "files", which SetOutput
	// replaces with io.Discard; errors still reach stderr via the threshold.
	fs.Set("logtostderr", "false")
	fs.Set("stderrthreshold", "ERROR")
	klog.SetOutput(io.Discard)
}

func run(kubeconfig, dataDir string, cfg serverConfig, componentsDir, readyFile string, verbosity int) int {
	kubeconfig, err := filepath.Abs(kubeconfig)
	if err != nil {
		log.Print(err)
		return 1
	}
	if readyFile != "" {
		if readyFile, err = filepath.Abs(readyFile); err != nil {
			log.Print(err)
			return 1
		}
		// A file left by an earlier run must not look like this one is ready.
		os.Remove(readyFile)
		defer os.Remove(readyFile)
	}
	if dataDir == "" {
		if dataDir, err = os.MkdirTemp("", "streampipe-controlplane-"); err != nil {
			log.Print(err)
			return 1
		}
		defer os.RemoveAll(dataDir)
	}

	// The first SIGTERM/SIGINT cancels ctx and starts a clean shutdown.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	etcd, err := startEtcd(filepath.Join(dataDir, "etcd"), verbosity > 0)
	if err != nil {
		log.Print(err)
		return 1
	}
	// Deferred, so it runs after the API server below has stopped using it.
	defer etcd.Close()

	cfg.dir, cfg.etcdURL = dataDir, etcd.url
	api, err := newAPIServer(ctx, cfg)
	if err != nil {
		log.Printf("configuring kube-apiserver: %v", err)
		return 1
	}
	// apiDone is closed when the API server has returned, with apiErr set.
	var apiErr error
	apiDone := make(chan struct{})
	go func() { apiErr = api.run(ctx); close(apiDone) }()

	// waitStopped waits for the API server's graceful shutdown (it drains
	// requests and stops its etcd clients) before etcd is closed.
	waitStopped := func() {
		stop() // a second signal now kills the process the default way
		select {
		case <-apiDone:
		case <-time.After(60 * time.Second):
			log.Print("kube-apiserver did not stop within 60s; closing etcd anyway")
		}
	}

	readyCtx, cancelReady := context.WithTimeout(ctx, readyTimeout)
	err = waitReady(readyCtx, api, apiDone, func() error { return apiErr }, etcd.Err())
	cancelReady()
	if err != nil {
		if ctx.Err() != nil { // interrupted while starting: not a failure
			waitStopped()
			return 0
		}
		log.Print(err)
		waitStopped()
		return 1
	}

	if err := writeKubeconfig(kubeconfig, api, "admin", api.token); err != nil {
		log.Print(err)
		waitStopped()
		return 1
	}
	for name, token := range api.components {
		if err := writeKubeconfig(filepath.Join(componentsDir, name+".kubeconfig"), api, name, token); err != nil {
			log.Print(err)
			waitStopped()
			return 1
		}
	}
	if readyFile != "" {
		caFile, _ := filepath.Abs(api.caFile)
		b, _ := json.Marshal(map[string]any{"kubeconfig": kubeconfig, "server": api.url, "pid": os.Getpid(), "caFile": caFile})
		if err := writeFileAtomic(readyFile, append(b, '\n'), 0o644); err != nil {
			log.Print(err)
			waitStopped()
			return 1
		}
	}
	fmt.Printf("ready kubeconfig=%s server=%s\n", kubeconfig, api.url)

	select {
	case <-ctx.Done():
		waitStopped()
		return 0
	case <-apiDone:
		log.Printf("kube-apiserver stopped unexpectedly: %v", apiErr)
		return 1
	case err := <-etcd.Err():
		log.Printf("etcd failed: %v", err)
		waitStopped()
		return 1
	}
}

// waitReady polls /readyz (all post-start hooks done, e.g. the RBAC bootstrap
// roles) and then the "default" namespace, authenticating exactly as the
// kubeconfig will, so a success also proves the CA and token work.
func waitReady(ctx context.Context, api *apiServer, apiDone <-chan struct{}, apiErr func() error, etcdErr <-chan error) error {
	ca, err := os.ReadFile(api.caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("no certificates in %s", api.caFile)
	}
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	ok := func(path string) bool {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, api.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+api.token)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	for _, path := range []string{"/readyz", "/api/v1/namespaces/default"} {
		for !ok(path) {
			select {
			case <-apiDone:
				return fmt.Errorf("kube-apiserver exited before it was ready: %v", apiErr())
			case err := <-etcdErr:
				return fmt.Errorf("etcd failed: %v", err)
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s: %w", path, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func writeKubeconfig(path string, api *apiServer, user, token string) error {
	ca, err := os.ReadFile(api.caFile)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["controlplane"] = &clientcmdapi.Cluster{Server: api.url, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["controlplane"] = &clientcmdapi.Context{Cluster: "controlplane", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "controlplane"
	b, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(path, b, 0o600)
}

// writeFileAtomic writes via a temporary file and rename, so a reader polling
// for the file never sees it half-written.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
