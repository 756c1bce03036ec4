// Command control-plane runs a real Kubernetes control plane on 127.0.0.1 for Orrery's tests,
// benchmarks and demo: embedded etcd, kube-apiserver (RBAC on) and, as a second process of
// this same binary, kube-controller-manager.
//
//	control-plane serve --dir DIR [--controller-manager=true] [--address IP] [--port N] [--priority-and-fairness] [--watch-cache=false] [--uncached=R,...]
//
// writes DIR/kubeconfig (admin, system:masters) once the API server is ready, and DIR/etcd-url
// (etcd's client URL, plain HTTP on 127.0.0.1), and runs until
// SIGINT/SIGTERM or until the process that started it exits. With --address the API server
// listens on that address instead of 127.0.0.1 and advertises it in the `kubernetes` Service,
// so pods of a real node reach it. Started again on the same DIR and --port, it serves the
// same data with the same certificates. --priority-and-fairness turns on API Priority and
// Fairness (FlowSchemas and PriorityLevelConfigurations throttle clients with 429s).
// --watch-cache=false serves every watch from etcd, so compacting etcd expires resumed watches
// (410 Gone) as a watch cache's window would only after a long outage; --uncached=pods,... does
// that for some built-in resources only (resource[.group]: custom resources always have one).
//
// The same binary is the real node's Kubernetes parts, from the same k8s.io/kubernetes module
// (see node.go): `kubelet`, `kube-scheduler` and `kube-proxy` take those commands' own flags,
// and `supervise` runs a command inside a network namespace and stops it with its parent.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

// adminToken is the bearer token of the admin user; it is only ever valid on 127.0.0.1.
const adminToken = "orrery-admin-token"

// controllers run by kube-controller-manager: enough for garbage collection, namespace
// deletion, Deployments down to Pods, and the Job/CronJob peers the benchmarks compare with.
const controllers = "garbagecollector,namespace,deployment,replicaset,job,cronjob,serviceaccount"

// nodeControllers run too when a real node may join: the node lifecycle controller lifts the
// not-ready taint once the kubelet reports Ready (and marks pods of a node gone silent not
// ready, which the pod simulator's node would be), EndpointSlices make Services reach pods,
// and kube-root-ca.crt in every namespace completes pods' ServiceAccount token volumes.
const nodeControllers = ",nodelifecycle,endpointslice,endpointslicemirroring,root-ca-cert-publisher"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "controller-manager" {
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	}
	if len(os.Args) > 1 && runNodeCommand(os.Args[1], os.Args[2:]) {
		return
	}
	if len(os.Args) < 2 || os.Args[1] != "serve" {
		fmt.Fprintln(os.Stderr, "usage: control-plane serve --dir DIR [--controller-manager=false] [--address IP] [--port N] [--priority-and-fairness] [--watch-cache=false] [--uncached=R,...]\n       control-plane kubelet|kube-scheduler|kube-proxy|supervise ...")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "", "state directory: certificates, etcd data, kubeconfig, logs")
	withKCM := fs.Bool("controller-manager", true, "also run kube-controller-manager")
	port := fs.Int("port", 0, "API server port (0: a free one)")
	removeDir := fs.Bool("remove-dir-on-exit", false, "delete --dir when stopping (for throwaway test control planes)")
	address := fs.String("address", "127.0.0.1", "address the API server listens on and advertises (a real node's pods reach it there)")
	flowControl := fs.Bool("priority-and-fairness", false, "turn on API Priority and Fairness (off: the plain in-flight limits)")
	watchCache := fs.Bool("watch-cache", true, "serve watches from the API server's cache (off: from etcd, so its compaction expires them)")
	uncached := fs.String("uncached", "", "built-in resources (resource[.group], comma separated) whose watches are served from etcd, not the watch cache")
	_ = fs.Parse(os.Args[2:])
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "--dir is required")
		os.Exit(2)
	}
	ip := net.ParseIP(*address)
	if ip == nil || ip.To4() == nil {
		fmt.Fprintf(os.Stderr, "--address %q is not an IPv4 address\n", *address)
		os.Exit(2)
	}
	var uncachedResources []string
	if *uncached != "" {
		uncachedResources = strings.Split(*uncached, ",")
	}
	err := serve(*dir, *withKCM, *port, ip, *flowControl, *watchCache, uncachedResources)
	if *removeDir {
		_ = os.RemoveAll(*dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "control-plane:", err)
		os.Exit(1)
	}
}

func serve(dir string, withKCM bool, port int, address net.IP, flowControl, watchCache bool, uncached []string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// A stale kubeconfig would tell a waiting client we are ready before we are.
	_ = os.Remove(filepath.Join(dir, "kubeconfig"))
	start := time.Now()

	pki, err := writePKI(filepath.Join(dir, "pki"), address)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	etcd, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()
	// Where a test reaches etcd itself (to compact it): its client URL changes at each start.
	etcdURL := "http://" + etcd.Clients[0].Addr().String()
	if err := os.WriteFile(filepath.Join(dir, "etcd-url"), []byte(etcdURL), 0o600); err != nil {
		return err
	}

	if port == 0 {
		if port, err = freePort(); err != nil {
			return err
		}
	}
	host := "https://" + net.JoinHostPort(address.String(), strconv.Itoa(port))
	// A loopback address cannot be an endpoint of the `kubernetes` Service; a real address is
	// kept there by the API server itself, so pods reach it through kube-proxy.
	// Pods of a real node get their ServiceAccount token mounted (the admission plugin adds
	// the projected volume); without a node no pod runs, and tests need not wait for each
	// namespace's default ServiceAccount.
	reconciler, disabledAdmission := "none", "ServiceAccount"
	if !address.IsLoopback() {
		reconciler, disabledAdmission = "lease", ""
	}
	certDir := filepath.Join(dir, "apiserver")
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--watch-cache=" + strconv.FormatBool(watchCache),
		"--cert-dir=" + certDir,
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--client-ca-file=" + pki.caCert,
		"--secure-port=" + strconv.Itoa(port),
		"--bind-address=" + address.String(),
		"--advertise-address=" + address.String(),
		"--service-cluster-ip-range=10.0.0.0/16",
		"--allow-privileged=true",
		"--authorization-mode=RBAC",
		"--disable-admission-plugins=" + disabledAdmission,
		"--enable-priority-and-fairness=" + strconv.FormatBool(flowControl),
		"--service-account-issuer=" + host + "/",
		"--service-account-key-file=" + pki.saKey,
		"--service-account-signing-key-file=" + pki.saKey,
		"--token-auth-file=" + pki.tokens,
		"--endpoint-reconciler-type=" + reconciler,
		// Logs and exec reach a real node's kubelet at its IP: its name resolves nowhere.
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	}
	if len(uncached) > 0 {
		// Size 0 turns a resource's watch cache off.
		sizes := make([]string, len(uncached))
		for i, resource := range uncached {
			sizes[i] = resource + "#0"
		}
		apiArgs = append(apiArgs, "--watch-cache-sizes="+strings.Join(sizes, ","))
	}

	api := apiserver.NewAPIServerCommand()
	api.SetArgs(apiArgs)
	apiDone := make(chan error, 1)
	go func() { apiDone <- api.Execute() }()

	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := waitReady(host, pki, apiDone); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	if err := writeKubeconfig(kubeconfig, host, pki.caCert); err != nil {
		return err
	}
	fmt.Printf("control plane ready at %s in %.1fs; KUBECONFIG=%s\n", host, time.Since(start).Seconds(), kubeconfig)

	var kcm *exec.Cmd
	if withKCM {
		if kcm, err = startControllerManager(dir, kubeconfig, pki, !address.IsLoopback()); err != nil {
			return fmt.Errorf("kube-controller-manager: %w", err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go watchParent(stop)
	select {
	case <-ctx.Done():
	case err := <-apiDone:
		return fmt.Errorf("kube-apiserver exited: %v", err)
	}
	if kcm != nil && kcm.Process != nil {
		_ = kcm.Process.Signal(syscall.SIGTERM)
		_, _ = kcm.Process.Wait()
	}
	// The API server registered its own signal handler and shuts down on the same signal;
	// give it a moment, then let etcd close under it.
	select {
	case <-apiDone:
	case <-time.After(5 * time.Second):
	}
	return nil
}

func startEtcd(dataDir string) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "orrery"
	cfg.Dir = dataDir
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("not ready after 60s")
	}
}

// waitReady polls /readyz and the default namespace until both answer.
func waitReady(host string, pki *pkiFiles, apiDone <-chan error) error {
	caPEM, err := os.ReadFile(pki.caCert)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	get := func(path string) bool {
		req, _ := http.NewRequest(http.MethodGet, host+path, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-apiDone:
			return fmt.Errorf("exited before ready: %v", err)
		default:
		}
		if get("/readyz") && get("/api/v1/namespaces/default") {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("not ready after 120s")
}

func startControllerManager(dir, kubeconfig string, pki *pkiFiles, forNode bool) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "controller-manager.log"))
	if err != nil {
		return nil, err
	}
	enabled := controllers
	if forNode {
		enabled += nodeControllers
	}
	cmd := exec.Command(self, "controller-manager",
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--controllers="+enabled,
		"--root-ca-file="+pki.caCert,
		"--service-account-private-key-file="+pki.saKey,
		"--concurrent-gc-syncs=5",
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Dies with us even if we are killed with SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// watchParent stops the control plane when the process that started it goes away, so a
// crashed test run never leaves an API server behind.
func watchParent(stop func()) {
	parent := os.Getppid()
	for {
		time.Sleep(500 * time.Millisecond)
		if os.Getppid() != parent {
			stop()
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			return
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writeKubeconfig(path, host, caFile string) error {
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: orrery
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: orrery
  context:
    cluster: orrery
    user: admin
    namespace: default
current-context: orrery
`, host, caFile, adminToken)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
