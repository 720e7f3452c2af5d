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

	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

// apiServer is a configured, not yet running kube-apiserver.
type apiServer struct {
	opts   options.CompletedOptions
	url    string // https://ADDRESS:PORT
	caFile string // PEM bundle that verifies the serving certificate
	token  string // bearer token of the admin user (group system:masters)
	// Tokens of the cluster's components by file name (kubelet, ...); empty
	// unless the server runs for a whole cluster (nodeName set).
	components map[string]string
}

// serverConfig says where kube-apiserver listens and whether it serves a
// whole cluster (a kubelet, controllers, kube-proxy) or the API alone.
type serverConfig struct {
	dir, etcdURL string
	address      string // the address it binds, advertises and puts in its certificate
	port         int    // 0: a free one
	// nodeName, when set, makes the server a cluster's: the Node authorizer
	// for that node's kubelet, the "kubernetes" Service's endpoint kept at
	// address (pods reach the API through it), and a token per component.
	nodeName string
}

// component is one identity in the static token file. The user names and
// groups are the ones Kubernetes' bootstrap RBAC (and the Node authorizer)
// grant exactly what that component needs, as on a kubeadm cluster.
type component struct {
	file, user, groups string
}

func clusterComponents(nodeName string) []component {
	return []component{
		{"kubelet", "system:node:" + nodeName, "system:nodes"},
		{"kube-controller-manager", "system:kube-controller-manager", ""},
		{"kube-scheduler", "system:kube-scheduler", ""},
		{"kube-proxy", "system:kube-proxy", ""},
		// The cluster DNS authenticates as the kube-dns ServiceAccount, which
		// the bootstrap ClusterRoleBinding system:kube-dns lets read Services.
		{"cluster-dns", "system:serviceaccount:kube-system:kube-dns", "system:serviceaccounts,system:serviceaccounts:kube-system"},
	}
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
func newAPIServer(ctx context.Context, c serverConfig) (*apiServer, error) {
	dir, etcdURL, port := c.dir, c.etcdURL, c.port
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

	// Static token authentication for the admin user written to the
	// kubeconfig (and, for a cluster, for each component).
	tokenFile := filepath.Join(certDir, "tokens.csv")
	users := []component{{"admin", "admin", "system:masters"}}
	if c.nodeName != "" {
		users = append(users, clusterComponents(c.nodeName)...)
	}
	tokens, err := ensureTokens(tokenFile, users)
	if err != nil {
		return nil, err
	}
	token := tokens["admin"]
	delete(tokens, "admin")

	ln, err := net.Listen("tcp", net.JoinHostPort(c.address, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listening for kube-apiserver: %w", err)
	}
	port = ln.Addr().(*net.TCPAddr).Port

	s := newRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + c.address,
		// Otherwise it advertises (and puts in the serving cert) the host's
		// primary IP instead of the address it listens on.
		"--advertise-address=" + c.address,
		// No serving cert given: kube-apiserver generates a self-signed CA and
		// serving cert (SANs 127.0.0.1, 10.0.0.1, kubernetes.default...) here
		// as apiserver.crt/.key, or uses the pair already there (a restart).
		"--cert-dir=" + certDir,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--token-auth-file=" + tokenFile,
		// On SIGTERM, end open watches (clients re-establish them) instead of
		// leaving them open: otherwise the HTTP server's shutdown waits for
		// them until its 60s timeout, so every stop with a client watching
		// (an operator) took a minute and a restart was a minute's outage.
		"--shutdown-watch-termination-grace-period=5s",
	}
	if c.nodeName == "" {
		args = append(args,
			// RBAC only: there are no kubelets, so the Node authorizer has
			// nothing to authorize and would only run extra informers.
			"--authorization-mode=RBAC",
			// The default admission plugins stay enabled, ServiceAccount
			// included: creating a Pod therefore needs its ServiceAccount
			// ("default") to exist, and no controller-manager runs here to
			// create it. The default "lease" reconciler would write the
			// address as the endpoint of the "kubernetes" Service; nothing
			// here can use that Service.
			"--endpoint-reconciler-type=none",
		)
	} else {
		args = append(args,
			// The kubelet's token is system:node:NAME: the Node authorizer and
			// NodeRestriction confine it to its own Node and Pods.
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			// The default "lease" reconciler keeps the "kubernetes" Service's
			// endpoint at the advertised address, which pods reach through
			// kube-proxy's rules for the Service's cluster IP.
			"--endpoint-reconciler-type=lease",
			"--kubelet-preferred-address-types=InternalIP",
		)
	}
	if err := fs.Parse(args); err != nil {
		ln.Close()
		return nil, err
	}
	s.SecureServing.Listener = ln
	s.SecureServing.BindPort = port

	// What kube-apiserver's cobra command does before and in RunE: settle
	// feature gates and the effective version, then complete and validate.
	if err := settleGlobals(s); err != nil {
		ln.Close()
		return nil, err
	}
	// The loopback client would otherwise log warnings it sends itself.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	completed, err := complete(ctx, s)
	if err != nil {
		ln.Close()
		return nil, err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		ln.Close()
		return nil, utilerrors.NewAggregate(errs)
	}
	return &apiServer{
		opts:       completed,
		url:        "https://" + net.JoinHostPort(c.address, strconv.Itoa(port)),
		caFile:     completed.SecureServing.ServerCert.CertKey.CertFile,
		token:      token,
		components: tokens,
	}, nil
}

// run serves until ctx is cancelled, then shuts down gracefully.
func (a *apiServer) run(ctx context.Context) error {
	return runServer(ctx, a.opts)
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

// ensureTokens returns a token for each user (by file name) from the static
// token file at path, making a token for each user the file lacks and
// rewriting the file if it made any. Tokens already there are kept, so
// kubeconfigs written before a restart still work after it.
func ensureTokens(path string, users []component) (map[string]string, error) {
	byUser := map[string]string{}
	var lines []string
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		fields := strings.SplitN(line, ",", 3)
		if len(fields) < 2 || fields[0] == "" {
			continue
		}
		byUser[fields[1]] = fields[0]
		lines = append(lines, line)
	}
	tokens := map[string]string{}
	added := false
	for _, u := range users {
		token, ok := byUser[u.user]
		if !ok {
			if token, err = randomHex(32); err != nil {
				return nil, err
			}
			line := token + "," + u.user + "," + u.user
			if u.groups != "" {
				line += `,"` + u.groups + `"`
			}
			lines = append(lines, line)
			added = true
		}
		tokens[u.file] = token
	}
	if added {
		if err := writeFileAtomic(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	return tokens, nil
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
