package lab

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	apiServerPort = 6443
	etcdClientURL = "http://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"
	// flannelUser is the identity flanneld runs as in the lab.
	flannelUser = "flannel"
	// startupTimeout bounds etcd's and kube-apiserver's start (generous: the
	// machine may be busy compiling).
	startupTimeout = 120 * time.Second
)

// controlPlane is etcd plus kube-apiserver in their own namespace.
type controlPlane struct {
	netns             string
	dir               string
	etcd, apiserver   *Process
	apiserverArgv     []string // to restart the same server (StartAPIServer)
	adminToken        string
	flannelToken      string
	adminKubeconfig   string
	flannelKubeconfig string
	client            *kubernetes.Clientset
}

// APIServerURL is the URL of the lab's kube-apiserver, reachable from every
// lab namespace.
func APIServerURL() string {
	return fmt.Sprintf("https://%s:%d", ControlPlaneIP, apiServerPort)
}

func (l *Lab) startControlPlane(etcdBin, apiserverBin string) (*controlPlane, error) {
	cp := &controlPlane{
		netns:        netnsName(l.runID, "cp"),
		dir:          filepath.Join(l.dir, "controlplane"),
		adminToken:   randomToken(),
		flannelToken: randomToken(),
	}
	if err := os.MkdirAll(cp.dir, 0o700); err != nil {
		return nil, err
	}
	if err := l.attachToUnderlay(cp.netns, "v-cp", ControlPlaneIP); err != nil {
		return nil, err
	}
	var err error
	cp.etcd, err = l.start(cp.netns, "etcd", nil, []string{etcdBin,
		"--name=lab",
		"--data-dir=" + filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls=" + etcdClientURL,
		"--advertise-client-urls=" + etcdClientURL,
		"--listen-peer-urls=" + etcdPeerURL,
		"--initial-advertise-peer-urls=" + etcdPeerURL,
		"--initial-cluster=lab=" + etcdPeerURL,
	})
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(cp.etcd, HTTPClientIn(cp.netns, 2*time.Second), etcdClientURL+"/health", ""); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}

	args, err := cp.writeAPIServerFiles()
	if err != nil {
		return nil, err
	}
	cp.apiserverArgv = append([]string{apiserverBin}, args...)
	if err := l.runAPIServer(cp); err != nil {
		return nil, err
	}
	cp.client, err = kubernetes.NewForConfig(cp.restConfig())
	if err != nil {
		return nil, err
	}
	if err := cp.grantFlannelRBAC(); err != nil {
		return nil, err
	}
	return cp, nil
}

// runAPIServer starts kube-apiserver with cp.apiserverArgv and waits until
// it is ready.
func (l *Lab) runAPIServer(cp *controlPlane) error {
	p, err := l.start(cp.netns, "kube-apiserver", nil, cp.apiserverArgv)
	if err != nil {
		return err
	}
	cp.apiserver = p
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:       DialContextIn(cp.netns),
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true,
	}}
	if err := waitHTTP(p, insecure, APIServerURL()+"/readyz", cp.adminToken); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	return nil
}

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL after a
// timeout) and waits for it to exit; etcd keeps running, so StartAPIServer
// brings back the same cluster.
func (l *Lab) StopAPIServer(t testing.TB) {
	t.Helper()
	l.cp.apiserver.Stop()
	l.cp.close()
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, with the
// same etcd, certificates, tokens and flags, and waits until it is ready.
func (l *Lab) StartAPIServer(t testing.TB) {
	t.Helper()
	if l.cp.apiserver.Running() {
		t.Fatalf("kube-apiserver is already running")
	}
	if err := l.runAPIServer(l.cp); err != nil {
		t.Fatalf("restarting kube-apiserver: %v", err)
	}
}

// APIServerProcess is the running (or last) kube-apiserver process.
func (l *Lab) APIServerProcess() *Process { return l.cp.apiserver }

// writeAPIServerFiles writes the token file, the service-account key and the
// kubeconfigs, and returns kube-apiserver's arguments.
func (cp *controlPlane) writeAPIServerFiles() ([]string, error) {
	tokens := filepath.Join(cp.dir, "tokens.csv")
	content := fmt.Sprintf("%s,admin,admin-uid,system:masters\n%s,%s,%s-uid\n", cp.adminToken, cp.flannelToken, flannelUser, flannelUser)
	if err := os.WriteFile(tokens, []byte(content), 0o600); err != nil {
		return nil, err
	}
	saKey := filepath.Join(cp.dir, "sa.key")
	if err := writeRSAKey(saKey); err != nil {
		return nil, err
	}
	cp.adminKubeconfig = filepath.Join(cp.dir, "admin.kubeconfig")
	cp.flannelKubeconfig = filepath.Join(cp.dir, "flannel.kubeconfig")
	if err := WriteKubeconfig(cp.adminKubeconfig, "admin", cp.adminToken); err != nil {
		return nil, err
	}
	if err := WriteKubeconfig(cp.flannelKubeconfig, flannelUser, cp.flannelToken); err != nil {
		return nil, err
	}
	return []string{
		"--etcd-servers=" + etcdClientURL,
		fmt.Sprintf("--secure-port=%d", apiServerPort),
		"--bind-address=0.0.0.0",
		"--advertise-address=" + ControlPlaneIP.String(),
		"--cert-dir=" + filepath.Join(cp.dir, "certs"),
		"--token-auth-file=" + tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// kubectl exec/logs on real nodes: by address, the lab has no DNS.
		"--kubelet-preferred-address-types=InternalIP",
	}, nil
}

// grantFlannelRBAC gives user "flannel" exactly the rights of REFERENCE
// section 3 (the upstream ClusterRole).
func (cp *controlPlane) grantFlannelRBAC() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		},
	}
	if _, err := cp.client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating ClusterRole flannel: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "flannel"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: flannelUser}},
	}
	if _, err := cp.client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating ClusterRoleBinding flannel: %w", err)
	}
	return nil
}

// restConfig is an admin client configuration that dials from inside the
// control-plane namespace.
func (cp *controlPlane) restConfig() *rest.Config {
	return &rest.Config{
		Host:            APIServerURL(),
		BearerToken:     cp.adminToken,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            DialContextIn(cp.netns),
		Timeout:         15 * time.Second,
		QPS:             50,
		Burst:           100,
	}
}

// close drops idle API connections: an open socket would keep the deleted
// control-plane namespace alive.
func (cp *controlPlane) close() {
	if cp.client == nil {
		return
	}
	if rc, ok := cp.client.CoreV1().RESTClient().(*rest.RESTClient); ok && rc.Client != nil {
		rc.Client.CloseIdleConnections()
	}
}

// waitHTTP polls url until it answers 200, failing early when p exits.
func waitHTTP(p *Process, client *http.Client, url, token string) error {
	return Poll(startupTimeout, func() error {
		if !p.Running() {
			return fmt.Errorf("%s %s; log tail:\n%s", p.Name, p.describeExit(), tail(p.Log(), 30))
		}
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
		}
		return nil
	})
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	block := &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}
	return os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
}

// WriteKubeconfig writes a kubeconfig for the lab's API server with a bearer token.
func WriteKubeconfig(path, user, token string) error {
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: %s
  user:
    token: %s
contexts:
- name: lab
  context:
    cluster: lab
    user: %s
current-context: lab
`, APIServerURL(), user, token, user)
	return os.WriteFile(path, []byte(content), 0o600)
}

func randomToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("lab: reading random bytes: %v", err))
	}
	return hex.EncodeToString(b)
}
