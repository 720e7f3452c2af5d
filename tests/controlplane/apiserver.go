package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"

	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// apiServer is a configured, not yet running kube-apiserver.
type apiServer struct {
	opts   options.CompletedOptions
	url    string // https://127.0.0.1:PORT
	caFile string // PEM bundle that verifies the serving certificate
	token  string // bearer token of the admin user (group system:masters)
}

// newAPIServer configures kube-apiserver the way the kube-apiserver command
// does (same option structs, same flag names), but with a listener we opened
// ourselves so the port is known before it starts: port, or a free one if 0.
//
// Everything a client depends on lives in dir/certs and is made only when
// missing: the serving certificate and its CA, the service-account signing
// key and the admin token. A start on the data dir of an earlier one (with
// the same port) is therefore a restart the earlier kubeconfig and
// ServiceAccount tokens survive, as on a real cluster.
func newAPIServer(ctx context.Context, dir, etcdURL string, port int) (*apiServer, error) {
	certDir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}

	// One key both signs ServiceAccount tokens (TokenRequest API) and
	// verifies them; kept across restarts so tokens minted before one stay
	// valid after it.
	saKey := filepath.Join(certDir, "sa.key")
	if err := ensureECKey(saKey); err != nil {
		return nil, err
	}

	// Static token authentication for the admin user written to the kubeconfig.
	tokenFile := filepath.Join(certDir, "tokens.csv")
	token, err := ensureAdminToken(tokenFile)
	if err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listening for kube-apiserver: %w", err)
	}
	port = ln.Addr().(*net.TCPAddr).Port

	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		// Otherwise it advertises (and puts in the serving cert) the host's
		// primary IP instead of loopback.
		"--advertise-address=127.0.0.1",
		// No serving cert given: kube-apiserver generates a self-signed CA and
		// serving cert (SANs 127.0.0.1, 10.0.0.1, kubernetes.default...) here
		// as apiserver.crt/.key, or uses the pair already there (a restart).
		"--cert-dir=" + certDir,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--token-auth-file=" + tokenFile,
		// RBAC only: there are no kubelets, so the Node authorizer has nothing
		// to authorize and would only run extra informers.
		"--authorization-mode=RBAC",
		// The default admission plugins stay enabled, ServiceAccount included:
		// creating a Pod therefore needs its ServiceAccount ("default") to exist,
		// and no controller-manager runs here to create it.
		// The default "lease" reconciler would write 127.0.0.1 as the endpoint
		// of the "kubernetes" Service; nothing here needs that Service.
		"--endpoint-reconciler-type=none",
		// On SIGTERM, end open watches (clients re-establish them) instead of
		// leaving them open: otherwise the HTTP server's shutdown waits for
		// them until its 60s timeout, so every stop with a client watching
		// (an operator) took a minute and a restart was a minute's outage.
		"--shutdown-watch-termination-grace-period=5s",
	}
	if err := fs.Parse(args); err != nil {
		ln.Close()
		return nil, err
	}
	s.SecureServing.Listener = ln
	s.SecureServing.BindPort = port

	// What kube-apiserver's cobra command does before and in RunE: settle
	// feature gates and the effective version, then complete and validate.
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		ln.Close()
		return nil, err
	}
	// The loopback client would otherwise log warnings it sends itself.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	completed, err := s.Complete(ctx)
	if err != nil {
		ln.Close()
		return nil, err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		ln.Close()
		return nil, utilerrors.NewAggregate(errs)
	}
	return &apiServer{
		opts:   completed,
		url:    fmt.Sprintf("https://127.0.0.1:%d", port),
		caFile: completed.SecureServing.ServerCert.CertKey.CertFile,
		token:  token,
	}, nil
}

// run serves until ctx is cancelled, then shuts down gracefully.
func (a *apiServer) run(ctx context.Context) error {
	return app.Run(ctx, a.opts)
}

// ensureECKey writes a new P-256 private key to path unless one is there.
func ensureECKey(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// ensureAdminToken returns the admin token from the static token file at
// path, or makes a new one and writes the file if there is none.
func ensureAdminToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		token, _, found := strings.Cut(string(b), ",")
		if !found || token == "" {
			return "", fmt.Errorf("%s: no token in the first field; delete the file for a new one", path)
		}
		return token, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	token, err := randomHex(32)
	if err != nil {
		return "", err
	}
	line := token + `,admin,admin,"system:masters"` + "\n"
	return token, writeFileAtomic(path, []byte(line), 0o600)
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
